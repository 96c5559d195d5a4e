"""Scaling benchmark: Ember against the other table optimizers as the model and the batch grow.

    python -m models.bench.scaling                           # the whole sweep; resumes
    python -m models.bench.scaling --points d128-b8 d128-b64 # some points only
    python -m models.bench.scaling --summarize               # tables, plots from saved runs
    python -m models.bench.scaling --preset tiny --out DIR   # seconds: what CI runs

A *point* is a model size and a batch size. The size axis runs four GPTs at 8 sequences per step,
from d_model 64 (one layer) to d_model 192 (four layers), 36x in non-embedding parameters; the
batch axis runs the ``small`` GPT (d_model 128) at 1 to 64 sequences per step. Every point runs
``adamw``, ``ember``, ``rowwise`` and ``adafactor`` on the token tables beside an AdamW body, and
four points (the small size, the largest, and the batch extremes) also run Adam and Ember tables
beside a Muon body (``adamw+muon``, ``ember+muon``).

Tokens per run follow one rule: ``BASE_TOKENS * (N / N_small) ** (1/4)`` for ``N`` non-embedding
parameters, so a larger model trains on more tokens; the batch axis keeps the small model's
budget and trades steps for batch. Warm-up is 5% of the steps, then cosine decay to a tenth.

At each point each setup is swept by the quality benchmark (``models.bench.quality``): a grid of
peak learning rates (body and tables alike) on seed 0, centred on a guess that grows with the
square root of the batch and shrinks with the width, extended wherever the best is on an edge;
then two more seeds at the best. Ember is compared with every other setup seed by seed, and
``ember+muon`` with ``adamw+muon``, with 95% t intervals and verdicts.
At ``table_rate_points`` each pair of Ember and Adam tables beside the same body then sweeps the
tables' rate alone, the body at the best rate of Adam tables beside it (``<point>/table_rates/``).

Every finished run is kept as JSON in ``<out>/<point>/runs/`` (committed under
``models/results/bench_scaling/``), so the sweep resumes from them on any machine; an
unfinished run resumes from its Orbax checkpoint in ``--checkpoint-dir`` on the same machine.
After each point, and with ``--summarize``, the benchmark rewrites ``scaling.json`` (strict JSON),
``scaling.md`` and the PNGs in ``--out`` from every saved run.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import math
from pathlib import Path

from flax import nnx
import jax
import numpy as np

from models import cli
from models.cli import ConfigError, option
from models.data import corpus as data_lib
from models.nets.gpt import GPT, GPTConfig
from models.optim.registry import Setup, default_setups, plot_style
from models.reporting import results as results_lib
from models.reporting import search as search_report
from models.reporting import stats, tables
from models.training import checkpoints as checkpoints_lib
from models.training import search
from models.training.config import corpus_option
from models.training.presets import PRESETS, Preset

PROG = 'python -m models.bench.scaling'
DEFAULT_OUT = Path('models', 'results', 'bench_scaling')
# Ember's peers on the tables: every other table optimizer the sweep compares.
TABLE_PEERS = tuple(name for name in default_setups('scaling') if name != 'ember')
MUON_PAIR = ('ember+muon', 'adamw+muon')
TABLE_RATES = 'table_rates'  # A point's sub-folder of its tables-only rate sweeps.
# (Ember tables, Adam tables) beside each body: the table-rate sweeps compare within a pair.
RATE_PAIRS = (('ember', 'adamw'), MUON_PAIR)


@dataclasses.dataclass(frozen=True)
class Point:
  """One model size at one batch size, and the setups it runs."""

  size: str
  batch_size: int
  setups: tuple[str, ...]

  @property
  def name(self) -> str:
    return f'{self.size}-b{self.batch_size}'


@dataclasses.dataclass(frozen=True)
class Sweep:
  """The sizes, the points and the budget rule of a scaling sweep.

  Attributes:
    sizes: model shapes by name (``vocab_size`` is the sweep's); the first is the smallest.
    base_size: the size whose budget is ``base_tokens`` (the batch axis's model).
    base_batch: the batch size of the size axis.
    base_tokens: training tokens of a run of ``base_size``.
    batches: the batch axis, at ``base_size``.
    muon_points: the points that also run ``MUON_PAIR``.
    muon_lr_ratio: the Muon body's grid centre, as a multiple of the AdamW body's (Muon's best
      rate is 2-4 times AdamW's at d128, so a grid centred there brackets it without growing).
    table_rate_points: points whose ``RATE_PAIRS`` then sweep the tables' rate alone, the body
      at the best rate of Adam tables beside it (the rate a user has already tuned): a table
      optimizer's best rate need not be its body's.
    table_rate_ratios: that sweep's starting grid, as multiples of the body's best rate.
    setups: the table setups of every point (AdamW body).
    seq_len: tokens per sequence.
    vocab_size: the tokenizer's vocabulary.
    eval_sequences: validation sequences of a run's final evaluation, whatever its batch.
    base_lr: the centre of the learning-rate grid at ``base_size`` and ``base_batch``.
    grid: the starting grid, as multiples of the centre.
    extend: how many times a grid may grow on each side.
    grid_seeds: the seeds of every grid point.
    best_seeds: the seeds added at each setup's best.
    order: the points' names in the order they run (the most telling first).
  """

  sizes: dict[str, GPTConfig]
  base_size: str
  base_batch: int
  base_tokens: int
  batches: tuple[int, ...]
  muon_points: tuple[str, ...]
  muon_lr_ratio: float
  table_rate_points: tuple[str, ...]
  table_rate_ratios: tuple[float, ...]
  setups: tuple[str, ...]
  seq_len: int
  vocab_size: int
  eval_sequences: int
  base_lr: float
  grid: tuple[float, ...]
  extend: int
  grid_seeds: tuple[int, ...]
  best_seeds: tuple[int, ...]
  order: tuple[str, ...]

  def points(self) -> list[Point]:
    """Every point once, in ``order``: the size axis and the batch axis share one."""
    points = {}
    for size in self.sizes:
      points[f'{size}-b{self.base_batch}'] = (size, self.base_batch)
    for batch in self.batches:
      points[f'{self.base_size}-b{batch}'] = (self.base_size, batch)
    result = []
    for name in self.order:
      size, batch = points.pop(name)
      muon = MUON_PAIR if name in self.muon_points else ()
      result.append(Point(size, batch, self.setups + muon))
    if points:
      raise ValueError(f'order leaves out points {sorted(points)}')
    return result

  def non_embedding_params(self, size: str) -> int:
    """Parameters of the blocks and the final norm: neither token tables nor positions."""
    config = dataclasses.replace(self.sizes[size], vocab_size=self.vocab_size)
    abstract = nnx.eval_shape(lambda: GPT(config, rngs=nnx.Rngs(0)))
    params = nnx.state(abstract, nnx.Param)
    return sum(
      int(np.prod(leaf.shape))
      for path, leaf in jax.tree_util.tree_leaves_with_path(params)
      if str(getattr(path[0], 'key', path[0])) in ('blocks', 'final_norm')
    )

  def steps(self, point: Point) -> int:
    """The budget rule: tokens grow as the fourth root of the non-embedding parameters."""
    ratio = self.non_embedding_params(point.size) / self.non_embedding_params(self.base_size)
    tokens = self.base_tokens * ratio**0.25
    return max(2, round(tokens / (point.batch_size * self.seq_len)))

  def lr_centre(self, point: Point) -> float:
    """The grid's centre: ``base_lr`` times sqrt(batch ratio) over the width ratio, rounded to
    ``base_lr`` times a power of two so that points share grid values."""
    width = self.sizes[self.base_size].d_model / self.sizes[point.size].d_model
    guess = math.log2(math.sqrt(point.batch_size / self.base_batch) * width)
    return self.base_lr * 2.0 ** round(guess)

  def grid_for(self, point: Point, setup: str) -> tuple[float, ...]:
    """``setup``'s starting grid at ``point``: the centre (times ``muon_lr_ratio`` for the Muon
    body) times ``grid``."""
    centre = self.lr_centre(point)
    if Setup.parse(setup).body == 'muon':
      centre *= self.muon_lr_ratio
    return tuple(centre * m for m in self.grid)

  def preset(self, point: Point) -> Preset:
    steps = self.steps(point)
    return Preset(
      model=self.sizes[point.size],
      batch_size=point.batch_size,
      seq_len=self.seq_len,
      steps=steps,
      lr=self.lr_centre(point),
      warmup_steps=max(1, round(0.05 * steps)),
      eval_every=max(1, steps // 4),
      eval_batches=max(1, self.eval_sequences // point.batch_size),
      vocab_size=self.vocab_size,
    )


SMALL = PRESETS['small'].model
SWEEPS: dict[str, Sweep] = {
  'full': Sweep(
    sizes={
      'd64': GPTConfig(max_len=128, d_model=64, n_layers=1, n_heads=2, d_ff=192),
      'd96': GPTConfig(max_len=128, d_model=96, n_layers=2, n_heads=3, d_ff=288),
      'd128': SMALL,
      'd192': GPTConfig(max_len=128, d_model=192, n_layers=4, n_heads=6, d_ff=576),
    },
    base_size='d128',
    base_batch=8,
    # Half the main job's 600 steps of 8 x 128 tokens: the whole sweep fits 8 CPU-hours.
    base_tokens=300 * 8 * 128,
    batches=(1, 4, 8, 64),
    muon_points=('d128-b8', 'd192-b8', 'd128-b1', 'd128-b64'),
    muon_lr_ratio=2.0,
    table_rate_points=('d128-b8', 'd128-b64'),
    table_rate_ratios=(0.25, 0.5, 1.0),
    setups=default_setups('scaling'),
    seq_len=128,
    vocab_size=8192,
    eval_sequences=512,
    base_lr=4e-3,
    grid=(0.5, 1.0, 2.0),
    extend=3,
    grid_seeds=(0,),
    best_seeds=(1, 2),
    order=(
      'd128-b8',
      'd128-b64',
      'd128-b1',
      'd192-b8',
      'd64-b8',
      'd96-b8',
      'd128-b4',
    ),
  ),
  'tiny': Sweep(
    sizes={
      't16': GPTConfig(max_len=32, d_model=16, n_layers=1, n_heads=1, d_ff=48),
      't32': GPTConfig(max_len=32, d_model=32, n_layers=2, n_heads=2, d_ff=96),
    },
    base_size='t16',
    base_batch=2,
    base_tokens=6 * 2 * 32,
    batches=(2, 4),
    muon_points=('t16-b2',),
    muon_lr_ratio=1.0,
    table_rate_points=('t16-b2',),
    table_rate_ratios=(0.5, 1.0),
    setups=('adamw', 'ember'),
    seq_len=32,
    vocab_size=512,
    eval_sequences=8,
    base_lr=1e-2,
    grid=(1.0, 2.0),
    extend=0,
    grid_seeds=(0,),
    best_seeds=(1,),
    order=('t16-b2', 't32-b2', 't16-b4'),
  ),
}


@dataclasses.dataclass(frozen=True)
class ScalingConfig:
  """The scaling benchmark's settings."""

  preset: str = option(
    'full',
    'the sweep: full (the README run, hours) or tiny (seconds, for CI)',
    choices=tuple(SWEEPS),
  )
  points: tuple[str, ...] | None = option(
    None, 'run only these points, e.g. d128-b8 (default: every point of the sweep, in order)'
  )
  setups: tuple[str, ...] | None = option(
    None,
    "run only these setups of each point, e.g. ember+muon adamw+muon (default: every point's "
    'setups); two processes may share a point only with disjoint --setups',
  )
  summarize: bool = option(
    False, 'train nothing: rebuild every table and plot from the runs saved in --out'
  )
  out: str | None = option(
    None,
    'results folder: runs, tables and plots (default: models/results/bench_scaling for '
    'the full sweep, out/bench_scaling/<preset> otherwise)',
  )
  checkpoint_dir: str = option(
    str(Path('out', 'bench_scaling', 'checkpoints')),
    'Orbax checkpoints of unfinished runs (finished runs are kept in --out)',
  )
  text: str | None = corpus_option('text')
  cache_dir: str | None = corpus_option('cache_dir')


def point_config(sweep: Sweep, point: Point, config: ScalingConfig, out: Path):
  """The quality benchmark's settings of ``point``, and the folder of its saved runs."""
  preset = sweep.preset(point)
  centre = preset.lr
  bench = search.SearchConfig(
    preset=point.size,
    setups=point.setups,
    seeds=sweep.grid_seeds,
    best_seeds=sweep.best_seeds,
    lrs=tuple(centre * m for m in sweep.grid),
    extend=sweep.extend,
    text=config.text,
    cache_dir=config.cache_dir,
    out=str(out / point.name),
    checkpoint_dir=str(Path(config.checkpoint_dir) / config.preset / point.name),
    checkpoint_every=max(1, preset.steps // 3),
    progress=False,
  )
  return bench, preset


def table_rate_config(
  sweep: Sweep, point: Point, config: ScalingConfig, out: Path, setup: str, body_lr: float
):
  """The quality benchmark's settings of ``setup``'s table-rate sweep at ``point``: the body at
  ``body_lr``, the tables' rate on ``table_rate_ratios`` of it."""
  bench, preset = point_config(sweep, point, config, out)
  bench = dataclasses.replace(
    bench,
    setups=(setup,),
    sweep='table-lr',
    lr_for={setup: body_lr},
    lrs=tuple(body_lr * ratio for ratio in sweep.table_rate_ratios),
    out=str(out / point.name / TABLE_RATES),
    checkpoint_dir=str(Path(bench.checkpoint_dir) / TABLE_RATES),
  )
  return bench, preset


def body_rates(point: Point, best: dict[str, float]) -> dict[str, float]:
  """The body's rate of each setup's table-rate sweep: the best rate (``best``, per setup) of
  Adam tables beside the same body, for the ``RATE_PAIRS`` that ``point`` runs."""
  rates = {}
  for ember_setup, adam_setup in RATE_PAIRS:
    if {ember_setup, adam_setup} <= set(point.setups) and adam_setup in best:
      rates[ember_setup] = rates[adam_setup] = best[adam_setup]
  return rates


def run_table_rates(
  sweep: Sweep, point: Point, config: ScalingConfig, out: Path, corpus, verbose: bool
) -> None:
  """Sweeps the tables' rate of each ``RATE_PAIRS`` setup at ``point``, once its learning-rate
  sweep is complete, the body at :func:`body_rates`.

  A grid point where the tables' rate equals the body's is the learning-rate sweep's run at that
  rate (the same computation), so it is taken from there instead of trained again.
  """
  runs = load_runs(out / point.name / 'runs')
  if point_status(sweep, point, runs) != 'complete':
    return
  best = {
    s: search.best_learning_rate([r for r in runs if r['setup'] == s], 'lr') for s in point.setups
  }
  runs_dir = out / point.name / TABLE_RATES / 'runs'
  for setup, body_lr in body_rates(point, best).items():
    bench, preset = table_rate_config(sweep, point, config, out, setup, body_lr)
    runs_dir.mkdir(parents=True, exist_ok=True)
    for run in runs:
      if run['setup'] == setup and run['lr'] == body_lr:
        path = runs_dir / f'{search.run_name(setup, "table-lr", body_lr, run["seed"])}.json'
        if not path.exists():
          results_lib.write_json(path, run, indent=None)
    search.run_search(bench, verbose=verbose, preset=preset, corpus=corpus, runs_dir=runs_dir)


def out_folder(config: ScalingConfig) -> Path:
  if config.out is not None:
    return Path(config.out)
  return DEFAULT_OUT if config.preset == 'full' else Path('out', 'bench_scaling', config.preset)


def run_scaling(config: ScalingConfig, verbose: bool = True) -> dict:
  """Runs (or resumes) every point of the sweep, then summarizes; returns the summary."""
  sweep = SWEEPS[config.preset]
  out = out_folder(config)
  points = _selected_points(sweep, config.points, config.setups)
  if config.summarize:
    return summarize(sweep, config, out, verbose=verbose)
  log = print if verbose else (lambda *a, **k: None)
  corpus = data_lib.load_corpus(
    config.text, vocab_size=sweep.vocab_size, cache_dir=config.cache_dir, verbose=verbose
  )
  for point in points:
    bench, preset = point_config(sweep, point, config, out)
    log(
      f'[scaling] {point.name}: {sweep.non_embedding_params(point.size):,} non-embedding '
      f'parameters, {preset.steps} steps of {point.batch_size} x {sweep.seq_len} tokens, '
      f'setups {" ".join(point.setups)}',
      flush=True,
    )
    runs_dir = out / point.name / 'runs'
    for grid in dict.fromkeys(sweep.grid_for(point, s) for s in point.setups):
      setups = tuple(s for s in point.setups if sweep.grid_for(point, s) == grid)
      grown = dataclasses.replace(bench, setups=setups, lrs=grid)
      search.run_search(grown, verbose=verbose, preset=preset, corpus=corpus, runs_dir=runs_dir)
    while True:  # Widen each grid to the span of every setup's best, until the span holds still.
      runs = load_runs(runs_dir)
      span = shared_span(sweep, point, runs)
      missing = {
        setup: span[setup] - {r['lr'] for r in runs if r['setup'] == setup}
        for setup in point.setups
      }
      if not any(missing.values()):
        break
      for setup, rates in missing.items():
        if rates:
          grid = {r['lr'] for r in runs if r['setup'] == setup} | rates
          log(f'[scaling] {point.name}: {setup} also at {sorted(rates)}, the span of the bests')
          widened = dataclasses.replace(bench, setups=(setup,), lrs=tuple(sorted(grid)))
          search.run_search(
            widened, verbose=verbose, preset=preset, corpus=corpus, runs_dir=runs_dir
          )
    if point.name in sweep.table_rate_points:
      run_table_rates(sweep, point, config, out, corpus, verbose)
    summarize(sweep, config, out, verbose=False)
  return summarize(sweep, config, out, verbose=verbose)


def _selected_points(
  sweep: Sweep, names: Sequence[str] | None, setups: Sequence[str] | None = None
) -> list[Point]:
  """The points named by ``--points`` (every point if None), each with only the ``--setups``
  it runs (all of them if None)."""
  points = sweep.points()
  if names is not None:
    known = {p.name: p for p in points}
    unknown = [n for n in names if n not in known]
    if unknown:
      raise ConfigError(f'--points: unknown point {unknown[0]!r}; choose from {" ".join(known)}')
    points = [known[n] for n in names]
  if setups is None:
    return points
  offered = sorted({s for p in points for s in p.setups})
  unknown = [s for s in setups if s not in offered]
  if unknown:
    raise ConfigError(
      f'--setups: {unknown[0]!r} is not a setup of the points chosen; choose from '
      f'{" ".join(offered)}'
    )
  narrowed = [
    dataclasses.replace(p, setups=tuple(s for s in p.setups if s in setups)) for p in points
  ]
  return [p for p in narrowed if p.setups]


def load_runs(runs_dir: Path) -> list[dict]:
  """The finished runs saved in ``runs_dir`` (none if it does not exist)."""
  if not runs_dir.is_dir():
    return []
  return [
    results_lib.read_json(path)
    for path in sorted(runs_dir.glob('*.json'))
    if path.name != checkpoints_lib.SETTINGS_FILE
  ]


def point_status(sweep: Sweep, point: Point, runs: Sequence[dict]) -> str:
  """``"complete"`` once every setup's grid brackets its best (or may grow no more) and the best
  has every seed; ``"partial"`` if some runs are saved; ``"not run"`` otherwise."""
  span = shared_span(sweep, point, runs)
  start = {setup: set(sweep.grid_for(point, setup)) | span[setup] for setup in point.setups}
  return grid_status(sweep, start, runs, 'lr')


def shared_span(sweep: Sweep, point: Point, runs: Sequence[dict]) -> dict[str, set[float]]:
  """The rates each setup's grid at ``point`` must also hold: those of the grids' lattice
  (``base_lr`` times powers of two) from the lowest to the highest best rate of any setup with
  the same body.

  A loss need not be unimodal in the rate (at d128-b64, AdamW-everywhere's grid bracketed a best
  of 0.016 with 0.008 worse, yet 0.004 is better still): a rate where another setup does best is
  tried for every setup before a best is taken. The bodies' rates mean different steps (Muon's
  best is 2-4 times AdamW's), so the span is taken within a body.
  """
  bests: dict[str, list[float]] = {}
  for setup in point.setups:
    if mine := [r for r in runs if r['setup'] == setup]:
      bests.setdefault(Setup.parse(setup).body, []).append(search.best_learning_rate(mine, 'lr'))
  # A rate some run already used stands for its lattice point, so that floats compare equal.
  used = sorted({r['lr'] for r in runs})
  spans = {}
  for body, rates in bests.items():
    first, last = (round(math.log2(lr / sweep.base_lr)) for lr in (min(rates), max(rates)))
    spans[body] = {
      next((u for u in used if math.isclose(u, lr, rel_tol=1e-9)), lr)
      for lr in (sweep.base_lr * 2.0**k for k in range(first, last + 1))
    }
  return {setup: spans.get(Setup.parse(setup).body, set()) for setup in point.setups}


def grid_status(sweep: Sweep, start: dict[str, set[float]], runs: Sequence[dict], key: str) -> str:
  """:func:`point_status` of the grids ``start`` (per setup) of the rate ``key`` of ``runs``."""
  if not runs:
    return 'not run'
  for setup, start_grid in start.items():
    mine = [r for r in runs if r['setup'] == setup]
    if not mine:
      return 'partial'
    lrs = sorted({r[key] for r in mine})
    if not start_grid <= set(lrs):
      return 'partial'
    best = search.best_learning_rate(mine, key)
    grown_low = sum(lr < min(start_grid) for lr in lrs)
    grown_high = sum(lr > max(start_grid) for lr in lrs)
    if (best == lrs[0] and grown_low < sweep.extend) or (
      best == lrs[-1] and grown_high < sweep.extend
    ):
      return 'partial'
    seeds = {r['seed'] for r in mine if r[key] == best}
    if not set(sweep.grid_seeds) | set(sweep.best_seeds) <= seeds:
      return 'partial'
  return 'complete'


def summarize(sweep: Sweep, config: ScalingConfig, out: Path, verbose: bool = True) -> dict:
  """Rebuilds every point's tables and the sweep's from the runs saved in ``out``."""
  points = {}
  for point in sweep.points():
    folder = out / point.name
    runs = load_runs(folder / 'runs')
    status = point_status(sweep, point, runs)
    bench, preset = point_config(sweep, point, config, out)
    entry = {
      'size': point.size,
      'batch_size': point.batch_size,
      'non_embedding_params': sweep.non_embedding_params(point.size),
      'steps': preset.steps,
      'tokens': preset.steps * point.batch_size * sweep.seq_len,
      'setups': list(point.setups),
      'status': status,
      'runs': len(runs),
      'train_time_s': float(sum(r.get('train_time_s', 0.0) for r in runs)),
    }
    if runs:
      settings = results_lib.read_json(folder / 'runs' / checkpoints_lib.SETTINGS_FILE)
      summary = search.summarize_search(dataclasses.asdict(bench), settings, runs)
      search_report.report(summary, folder, verbose=False)
      best = summary['best']
      at_best = {
        s: [r for r in runs if r['setup'] == s and r['lr'] == best[s]['best_lr']] for s in best
      }
      muon = {s: at_best[s] for s in MUON_PAIR if s in at_best}
      paired_muon = {}
      if len(muon) == 2:
        paired_muon = stats.paired_differences(muon, reference=MUON_PAIR[0])
      entry.update(
        best={
          s: {
            'best_lr': b['best_lr'],
            'lr_on_grid_edge': b['lr_on_grid_edge'],
            'grid': sorted({r['lr'] for r in runs if r['setup'] == s}),
            'seeds': b['seeds'],
            'final_val_loss': b['final_val_loss'],
            'rare_val_loss': b['rare_val_loss'],
            'table_state_bytes': b['table_state_bytes'],
            'initial_val_loss': float(np.mean([r['initial_val_loss'] for r in at_best[s]])),
          }
          for s, b in best.items()
        },
        paired={s: v for s, v in summary['paired'].items() if s in TABLE_PEERS},
        paired_muon=paired_muon,
      )
    if point.name in sweep.table_rate_points:
      entry['table_rates'] = summarize_table_rates(sweep, point, config, out, entry.get('best', {}))
    points[point.name] = entry
  result = {
    'sweep': config.preset,
    'rule': {
      'base_tokens': sweep.base_tokens,
      'tokens': 'base_tokens * (N / N_base) ** 0.25',
      'base_size': sweep.base_size,
      'lr_centre': 'base_lr * 2 ** round(log2(sqrt(batch / base_batch) * d_base / d))',
      'base_lr': sweep.base_lr,
      'grid': list(sweep.grid),
      'muon_lr_ratio': sweep.muon_lr_ratio,
      'extend': sweep.extend,
      'grid_seeds': list(sweep.grid_seeds),
      'best_seeds': list(sweep.best_seeds),
    },
    'points': points,
    'train_time_s': float(sum(p['train_time_s'] for p in points.values())),
  }
  result['tables'] = format_tables(sweep, result)
  out.mkdir(parents=True, exist_ok=True)
  results_lib.write_json(out / 'scaling.json', result)
  (out / 'scaling.md').write_text(result['tables'] + '\n')
  plot_all(sweep, result, out)
  if verbose:
    print('\n' + result['tables'])
    print(f'[scaling] wrote {out / "scaling.json"}, scaling.md and the plots')
  return result


def summarize_table_rates(
  sweep: Sweep, point: Point, config: ScalingConfig, out: Path, best: dict
) -> dict:
  """The table-rate sweeps of ``point`` (:func:`run_table_rates`) from their saved runs.

  Args:
    best: the point's ``best`` entry of :func:`summarize` (each setup's best rate).

  Returns:
    ``{"status"}``, and once runs are saved ``"pair_status"`` (per Adam setup of ``RATE_PAIRS``,
    the status of its pair alone), ``"best"`` (per setup: the body's rate, the tables'
    best rate and its ratio to the body's, the grid, the losses) and ``"paired"`` (per Adam
    setup of ``RATE_PAIRS``: the Ember setup beside the same body minus it, each at its tables'
    best rate). Also writes the sub-folder's ``bench.json`` and ``bench.md``.
  """
  folder = out / point.name / TABLE_RATES
  runs = load_runs(folder / 'runs')
  body_lrs = body_rates(point, {s: b['best_lr'] for s, b in best.items()})
  if not runs or not body_lrs:
    return {'status': 'not run'}
  start = {s: {lr * ratio for ratio in sweep.table_rate_ratios} for s, lr in body_lrs.items()}
  first = next(iter(body_lrs))
  bench, _ = table_rate_config(sweep, point, config, out, first, body_lrs[first])
  bench = dataclasses.replace(
    bench, setups=tuple(body_lrs), lr_for=body_lrs, lrs=tuple(sorted(set.union(*start.values())))
  )
  settings = results_lib.read_json(folder / 'runs' / checkpoints_lib.SETTINGS_FILE)
  summary = search.summarize_search(dataclasses.asdict(bench), settings, runs)
  search_report.report(summary, folder, verbose=False)
  at_best = {
    s: [r for r in runs if r['setup'] == s and r['table_lr'] == b['best_lr']]
    for s, b in summary['best'].items()
  }
  paired = {}
  for ember_setup, adam_setup in RATE_PAIRS:
    if ember_setup in at_best and adam_setup in at_best:
      pair = {ember_setup: at_best[ember_setup], adam_setup: at_best[adam_setup]}
      paired.update(stats.paired_differences(pair, reference=ember_setup))
  pair_status = {}
  for pair in RATE_PAIRS:
    if set(pair) <= set(start):
      mine = [r for r in runs if r['setup'] in pair]
      pair_status[pair[1]] = grid_status(sweep, {s: start[s] for s in pair}, mine, 'table_lr')
  return {
    'status': grid_status(sweep, start, runs, 'table_lr'),
    'pair_status': pair_status,
    'best': {
      s: {
        'body_lr': body_lrs[s],
        'best_table_lr': b['best_lr'],
        'ratio': b['best_lr'] / body_lrs[s],
        'lr_on_grid_edge': b['lr_on_grid_edge'],
        'grid': sorted({r['table_lr'] for r in runs if r['setup'] == s}),
        'seeds': b['seeds'],
        'final_val_loss': b['final_val_loss'],
        'rare_val_loss': b['rare_val_loss'],
      }
      for s, b in summary['best'].items()
    },
    'paired': paired,
  }


def _interval(diff: dict) -> str:
  """``-0.031 [-0.045, -0.017] better`` from a paired difference."""
  values = diff['final_val_loss']
  if values['n'] < 2:
    return f'{values["mean"]:+.3f} (1 seed)'
  low, high = values['ci95']
  return f'{values["mean"]:+.3f} [{low:+.3f}, {high:+.3f}] {values["verdict"]}'


def _rare(diff: dict) -> str:
  values = diff['rare_val_loss']
  if values['n'] < 2:
    return f'{values["mean"]:+.3f}'
  return f'{values["mean"]:+.3f} {values["verdict"]}'


def _setup_order(sweep: Sweep) -> list[str]:
  return [*sweep.setups, *MUON_PAIR]


def format_tables(sweep: Sweep, result: dict) -> str:
  """The sweep's markdown tables: the gaps along each axis, beside Muon, and the best rates."""
  points = result['points']
  sections = []
  size_axis = [f'{size}-b{sweep.base_batch}' for size in sweep.sizes]
  batch_axis = [f'{sweep.base_size}-b{b}' for b in sweep.batches]
  for title, names in (('Size axis', size_axis), ('Batch axis', batch_axis)):
    rows = []
    for name in names:
      p = points[name]
      paired = p.get('paired', {})
      rows.append(
        [
          name,
          f'{p["non_embedding_params"]:,}',
          f'{p["steps"]} x {p["batch_size"]}',
          p['status'],
          *(_interval(paired[s]) if s in paired else '' for s in TABLE_PEERS),
          *(_rare(paired[s]) if s in paired else '' for s in TABLE_PEERS),
        ]
      )
    header = [
      'point',
      'non-emb. params',
      'steps x batch',
      'status',
      *(f'ember - {s}, val loss' for s in TABLE_PEERS),
      *(f'ember - {s}, rare' for s in TABLE_PEERS),
    ]
    sections.append(f'### {title}\n\n' + tables.markdown_table(header, rows))
  muon_rows = []
  for name in (n for n in sweep.order if n in sweep.muon_points):
    p = points[name]
    paired = p.get('paired_muon', {})
    muon_rows.append(
      [
        name,
        p['status'],
        _interval(paired[MUON_PAIR[1]]) if MUON_PAIR[1] in paired else '',
        _rare(paired[MUON_PAIR[1]]) if MUON_PAIR[1] in paired else '',
      ]
    )
  sections.append(
    '### Beside a Muon body\n\n'
    + tables.markdown_table(
      ['point', 'status', 'ember+muon - adamw+muon, val loss', 'rare'], muon_rows
    )
  )
  rate_rows = []
  for name in (n for n in sweep.order if n in sweep.table_rate_points):
    rates = points[name].get('table_rates', {'status': 'not run'})
    for ember_setup, adam_setup in RATE_PAIRS:
      cells = []
      for setup in (ember_setup, adam_setup):
        b = rates.get('best', {}).get(setup)
        if b is None:
          cells.append('')
          continue
        edge = ' (edge)' if b['lr_on_grid_edge'] else ''
        loss = tables.format_loss(b['final_val_loss'])
        cells.append(f'{b["best_table_lr"]:g} / {b["body_lr"]:g}{edge}: {loss}')
      paired = rates.get('paired', {}).get(adam_setup)
      cells += [_interval(paired), _rare(paired)] if paired else ['', '']
      body = Setup.parse(ember_setup).body
      status = rates.get('pair_status', {}).get(adam_setup, rates['status'])
      rate_rows.append([name, body, status, *cells])
  sections.append(
    "### Each setup's tables at their own rate, the body at Adam tables' best rate\n\n"
    + tables.markdown_table(
      [
        'point',
        'body',
        'status',
        'Ember tables: tables / body rate, val loss',
        'Adam tables: tables / body rate, val loss',
        'Ember - Adam tables, val loss',
        'rare',
      ],
      rate_rows,
    )
  )
  setups = [s for s in _setup_order(sweep) if any(s in p.get('best', {}) for p in points.values())]
  lr_rows = []
  for name in sweep.order:
    best = points[name].get('best', {})
    cells = []
    for s in setups:
      if s not in best:
        cells.append('')
        continue
      b = best[s]
      loss = tables.format_loss(b['final_val_loss'])
      edge = ' (edge)' if b['lr_on_grid_edge'] else ''
      cells.append(f'{b["best_lr"]:g}{edge}: {loss}')
    lr_rows.append([name, *cells])
  sections.append(
    '### Best learning rate and final validation loss at it (mean ± std over seeds)\n\n'
    + tables.markdown_table(['point', *setups], lr_rows)
  )
  hours = result['train_time_s'] / 3600
  sections.append(f"Sum of the saved runs' training times: {hours:.2f} h.")
  return '\n\n'.join(sections)


def plot_all(sweep: Sweep, result: dict, out: Path) -> None:
  """Writes ``gap_vs_params.png``, ``gap_vs_batch.png``, ``best_lr_vs_batch.png`` and
  ``curves_extremes.png`` from ``result``."""
  import matplotlib
  import matplotlib.pyplot as plt

  points = result['points']
  size_axis = [f'{size}-b{sweep.base_batch}' for size in sweep.sizes]
  batch_axis = [f'{sweep.base_size}-b{b}' for b in sweep.batches]
  for names, x_of, xlabel, base, path in (
    (
      size_axis,
      lambda p: p['non_embedding_params'],
      'non-embedding parameters',
      10,
      'gap_vs_params',
    ),
    (batch_axis, lambda p: p['batch_size'], 'sequences per step (fixed tokens)', 2, 'gap_vs_batch'),
  ):
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    pairs = [(peer, 'paired', peer) for peer in TABLE_PEERS]
    pairs.append(('adamw+muon', 'paired_muon', 'muon body: ember - adamw'))
    for k, (peer, key, label) in enumerate(pairs):
      xs, ys, lo, hi = [], [], [], []
      for name in names:
        diff = points[name].get(key, {}).get(peer)
        if diff is None or diff['final_val_loss']['n'] < 2:
          continue
        values = diff['final_val_loss']
        # Spread the peers a little sideways so that their intervals do not hide each other.
        xs.append(x_of(points[name]) * 1.04 ** (k - 1.5))
        ys.append(values['mean'])
        lo.append(values['mean'] - values['ci95'][0])
        hi.append(values['ci95'][1] - values['mean'])
      if xs:
        color = plot_style(peer)[0]
        style = '--' if key == 'paired_muon' else '-'
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt='o' + style, color=color, capsize=3, label=label)
    ax.axhline(0.0, color='black', lw=0.8)
    ax.set_xscale('log', base=base)
    if base == 2:
      ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter('%g'))
    ax.set_xlabel(xlabel)
    ax.set_ylabel('Ember minus peer, final val loss (nats)')
    ax.set_title('Ember minus each peer (95% interval over seeds); below 0: Ember better')
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f'{path}.png', dpi=120)
    plt.close(fig)

  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  setups = [
    s for s in _setup_order(sweep) if any(s in points[n].get('best', {}) for n in batch_axis)
  ]
  for setup in setups:
    xs = [points[n]['batch_size'] for n in batch_axis if setup in points[n].get('best', {})]
    ys = [
      points[n]['best'][setup]['best_lr'] for n in batch_axis if setup in points[n].get('best', {})
    ]
    color, style = plot_style(setup)
    ax.plot(xs, ys, 'o' + style, color=color, label=setup)
  ax.set_xscale('log', base=2)
  ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter('%g'))
  ax.set_yscale('log', base=2)
  ax.set_xlabel('sequences per step (fixed tokens)')
  ax.set_ylabel('best peak learning rate')
  ax.set_title(f'Best learning rate against batch size, {sweep.base_size}')
  ax.grid(alpha=0.3)
  if setups:
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out / 'best_lr_vs_batch.png', dpi=120)
  plt.close(fig)

  extremes = list(dict.fromkeys([size_axis[0], size_axis[-1], batch_axis[0], batch_axis[-1]]))
  fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
  for ax in axes.flat[len(extremes) :]:
    ax.set_visible(False)
  for ax, name in zip(axes.flat, extremes, strict=False):
    _plot_point_curves(ax, out / name / 'runs', points[name].get('best', {}))
    ax.set_title(name)
  fig.suptitle("Validation loss at each setup's best learning rate, seeds averaged (★ final)")
  fig.tight_layout()
  fig.savefig(out / 'curves_extremes.png', dpi=120)
  plt.close(fig)


def _plot_point_curves(ax, runs_dir: Path, best: dict) -> None:

  runs = load_runs(runs_dir)
  late = []
  for setup, b in best.items():
    mine = [r for r in runs if r['setup'] == setup and r['lr'] == b['best_lr']]
    curves = [np.asarray(r['val_loss_curve'], dtype=float) for r in mine if r['val_loss_curve']]
    if not curves or len({c.shape for c in curves}) != 1:
      continue
    mean = np.mean(curves, axis=0)
    color, style = plot_style(setup)
    ax.plot(mean[:, 0], mean[:, 1], style, color=color, label=setup, lw=1.2)
    ax.plot(mean[-1, 0], mean[-1, 1], '*', color=color, ms=9)
    late.extend(mean[1:, 1])
  if late:
    ax.set_ylim(min(late) - 0.05, np.percentile(late, 75) + 0.3)
  ax.set_xlabel('step')
  ax.set_ylabel('validation loss')
  ax.grid(alpha=0.3)
  if late:
    ax.legend(fontsize=8)


def build_parser() -> cli.Parser:
  return cli.parser_for(
    ScalingConfig,
    PROG,
    'Ember against AdamW, row-wise RMSprop and Adafactor on the token tables (and against Adam '
    'tables beside a Muon body) across model sizes and batch sizes, each setup at its own '
    'best learning rate, with paired 95% intervals over seeds.',
  )


def main(argv: Sequence[str] | None = None) -> dict:
  args = build_parser().parse_args(argv)
  return cli.run_command(PROG, lambda: run_scaling(cli.from_args(args, ScalingConfig)))


if __name__ == '__main__':
  main()
