"""Supervised fine-tuning: the token tables' optimizers compared from one pretrained model.

    python -m models.sft                           # the full comparison (small preset), resumable
    python -m models.sft --preset tiny --out DIR   # seconds: what CI runs

The task is the corpus's own code (``models.data.docstring_pairs``): given a function's
signature and docstring, write its body; the loss is on the response tokens only, and the
held-out pairs come from the corpus's held-out files. Every run starts from the same base model
(``models.training.pretrained``: the main job's recipe under AdamW, built and cached if
missing) and, within a seed, sees the same batches; the setups differ only in what trains the
token tables:

* beside an AdamW body: ``adamw``, ``ember``, ``adafactor``, ``rowwise`` and ``frozen`` tables;
* tables only, the body frozen: ``adamw+frozen``, ``ember+frozen``, ``adafactor+frozen`` and
  ``rowwise+frozen``.

Each setup runs at its own best peak learning rate, found as the quality benchmark finds it
(``models.bench.quality``: a grid on ``--seeds`` that grows until it brackets the best, then
``--best-seeds`` there). Reported per setup: the held-out response loss, the pretraining
domain's validation loss after fine-tuning (forgetting) and the tables' optimizer-state bytes;
Ember is compared with each other setup of its body seed by seed, with 95% intervals.

Writes to ``--out`` (default ``models/results/sft`` for the small preset, ``out/sft/<preset>``
otherwise): ``results.json`` (strict JSON), ``results.md`` (the tables), ``frontier.png``
(table-state bytes against held-out loss) and ``curves.png``; every finished run is kept in
``<out>/runs/`` (committed for the full run), so the same command resumes a stopped comparison,
or rebuilds the tables from the saved runs alone.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
from pathlib import Path
import time

from flax import nnx
import numpy as np

from models import cli
from models.cli import ConfigError, option
from models.data import docstring_pairs
from models.optim import registry
from models.optim.registry import Setup
from models.reporting import plots, stats, tables
from models.reporting import results as results_lib
from models.training import search
from models.training import step as step_lib
from models.training.config import resolve
from models.training.loop import Comparison
from models.training.presets import PRESETS, FineTuningDefaults
from models.training.pretrained import PretrainConfig, load_or_pretrain

PROG = 'python -m models.sft'
TASK = f'docstring-pairs-v{docstring_pairs.CACHE_VERSION}'
# Every table optimizer the registry fine-tunes with, beside AdamW, then each that trains beside a
# frozen body (tables-only fine-tuning).
SFT_SETUPS = (
  *registry.default_setups('sft'),
  *(
    f'{name}+frozen'
    for name in registry.default_setups('sft')
    if registry.TABLE_OPTIMIZERS[name].trains
  ),
)
FORGETTING = 'pretrain_val'  # The extra evaluation: the pretraining domain's validation set.
DEFAULT_OUT = Path('models', 'results', 'sft')


@dataclasses.dataclass(frozen=True)
class SFTConfig(search.SearchConfig):
  """The quality benchmark's settings, for fine-tuning from the pretrained base model."""

  setups: tuple[str, ...] = option(
    SFT_SETUPS, 'setups to compare, TABLES or TABLES+BODY (body frozen: tables-only fine-tuning)'
  )
  seeds: tuple[int, ...] = option((0,), 'batch-order seeds of every grid point')
  steps: int | None = option(None, 'fine-tuning steps per run (default: 300; tiny preset: 20)')
  lrs: tuple[float, ...] | None = option(
    None, 'the starting grid of peak learning rates (default: 5e-4 1e-3 2e-3; tiny: 3e-3)'
  )
  best_seeds: tuple[int, ...] | None = option(
    None, "more seeds at each setup's best learning rate (default: 1 2; tiny: none)"
  )
  extend: int | None = option(
    None, "how many times a grid may grow on each side to bracket a setup's best (default: 2)"
  )
  pretrain_seed: int = option(0, "the base model's seed (models.pretrain --seed)")
  pretrain_steps: int | None = option(
    None, "the base model's pretraining steps (default: the preset's)"
  )
  pretrained_dir: str | None = option(
    None, 'cache of pretrained checkpoints (default: $EMBER_OPTAX_CACHE_DIR/pretrained)'
  )
  out: str | None = option(
    None,
    'folder for results.json, the tables, plots and runs/ (default: models/results/sft '
    'for the small preset, out/sft/<preset> otherwise)',
  )
  checkpoint_dir: str | None = option(
    None, 'Orbax checkpoints of unfinished runs (default: out/sft/checkpoints/<preset>)'
  )

  def filled(self) -> SFTConfig:
    """The settings with the preset's fine-tuning defaults where none was given."""
    defaults = PRESETS[self.preset].sft if self.preset in PRESETS else FineTuningDefaults()
    out = self.out
    if out is None:
      out = str(DEFAULT_OUT if self.preset == 'small' else Path('out', 'sft', self.preset))
    return dataclasses.replace(
      self,
      steps=defaults.steps if self.steps is None else self.steps,
      lrs=defaults.lrs if self.lrs is None else self.lrs,
      best_seeds=defaults.best_seeds if self.best_seeds is None else self.best_seeds,
      extend=defaults.extend if self.extend is None else self.extend,
      out=out,
      checkpoint_dir=self.checkpoint_dir or str(Path('out', 'sft', 'checkpoints', self.preset)),
    )


def padded_batches(pairs: docstring_pairs.PairSet, batch_size: int):
  """Every pair once, in batches of ``batch_size`` rows; the last one padded with unscored rows."""
  inputs, targets = pairs.inputs, pairs.targets
  batches = []
  for start in range(0, len(pairs), batch_size):
    x, y = inputs[start : start + batch_size], targets[start : start + batch_size]
    missing = batch_size - x.shape[0]
    if missing:
      x = np.concatenate([x, np.zeros((missing, x.shape[1]), x.dtype)])
      y = np.concatenate([y, np.full((missing, y.shape[1]), -1, y.dtype)])
    batches.append((x, y))
  return batches


def build_comparison(config: SFTConfig, verbose: bool = True) -> tuple[Comparison, dict]:
  """The fine-tuning comparison (base model, pairs, evaluations) and the base model's record.

  Raises:
    ConfigError: if the settings give a model of another shape than the base model's.
  """
  plan = resolve(config)
  base = Comparison.build(plan, verbose=verbose)
  train_pairs, held_out = docstring_pairs.load_pairs(base.corpus, plan.seq_len)
  if plan.batch_size > len(train_pairs):
    raise ConfigError(
      f'--batch-size {plan.batch_size} is more than the {len(train_pairs)} training pairs of '
      f'--seq-len {plan.seq_len}; use a smaller batch or a larger corpus'
    )
  pretrain_config = PretrainConfig(
    preset=config.preset,
    seed=config.pretrain_seed,
    steps=config.pretrain_steps,
    text=config.text,
    cache_dir=config.cache_dir,
    pretrained_dir=config.pretrained_dir,
  )
  # Checked before the base model is read or trained.
  base_shape = resolve(pretrain_config.train_config()).model
  if base_shape != plan.model:
    given, theirs = dataclasses.asdict(plan.model), dataclasses.asdict(base_shape)
    differing = sorted(k for k in given if given[k] != theirs[k])
    raise ConfigError(
      f'the fine-tuned model differs from the base model in {differing} (from --seq-len, '
      f'--vocab-size or --tie-embeddings); keep the preset {config.preset!r} values'
    )
  pretrained = load_or_pretrain(pretrain_config, corpus=base.corpus, verbose=verbose)
  comparison = dataclasses.replace(
    base,
    val_batches=padded_batches(held_out, plan.batch_size),
    start_params=pretrained.params,
    train_source=lambda seed, start: docstring_pairs.pair_batches(
      train_pairs, batch_size=plan.batch_size, steps=plan.steps, seed=seed, start=start
    ),
    extra_evals={FORGETTING: base.val_batches},
  )
  graphdef = nnx.graphdef(comparison.init_model(0))
  response_loss, rare_loss = step_lib.evaluate(
    graphdef, pretrained.params, comparison.val_batches, comparison.rare_mask
  )
  record = {
    'path': str(pretrained.path),
    'key': pretrained.path.name,
    'pretrain_val_loss': step_lib.evaluate(
      graphdef, pretrained.params, base.val_batches, base.rare_mask
    )[0],
    'held_out_response_loss': response_loss,
    'rare_response_loss': rare_loss,
    'pairs': {
      'train': len(train_pairs),
      'held_out': len(held_out),
      'dropped_too_long': train_pairs.dropped + held_out.dropped,
      'response_tokens_held_out': int(held_out.loss_mask.sum()),
    },
  }
  return comparison, record


def body_of(setup: str) -> str:
  return Setup.parse(setup).body


def compare(summary: dict, base_model: dict) -> dict:
  """Ember against each other setup of its body, at their best rates, and the targets."""
  losses = (*stats.LOSSES, f'{FORGETTING}_loss')
  best = summary['best']
  at_best = {
    setup: [r for r in summary['runs'] if r['setup'] == setup and r['lr'] == s['best_lr']]
    for setup, s in best.items()
  }
  paired = {}
  for reference in ('ember', 'ember+frozen'):
    if reference not in at_best:
      continue
    same_body = {s: runs for s, runs in at_best.items() if body_of(s) == body_of(reference)}
    paired[reference] = stats.paired_differences(same_body, reference, losses)
  targets = {}
  ember_pairs = paired.get('ember', {})

  def held_out(other: str) -> dict | None:
    diff = ember_pairs.get(other)
    return None if diff is None else diff['final_val_loss']

  if 'adamw' in ember_pairs:
    diff = held_out('adamw')
    high = diff['ci95'][1]
    targets['no_worse_than_adamw_tables'] = {
      'difference': diff,
      'met': high is not None and high <= 0,
    }
    targets['table_state_ratio_adamw_over_ember'] = (
      best['adamw']['table_state_bytes'] / best['ember']['table_state_bytes']
    )
  for other in ('frozen', 'rowwise'):
    if other in ember_pairs:
      diff = held_out(other)
      targets[f'better_than_{other}'] = {'difference': diff, 'met': diff['verdict'] == 'better'}
  forgetting = {
    setup: {
      'mean': s[f'{FORGETTING}_loss']['mean'] - base_model['pretrain_val_loss'],
      'ci95': [v - base_model['pretrain_val_loss'] for v in s[f'{FORGETTING}_loss']['ci95']],
    }
    for setup, s in best.items()
  }
  return {'paired': paired, 'targets': targets, 'forgetting': forgetting}


def format_tables(results: dict) -> str:
  base = results['base_model']
  best, forgetting = results['best'], results['forgetting']
  pairs = base['pairs']
  lines = [
    f'Base model {base["key"]}: held-out response loss {base["held_out_response_loss"]:.4f}, '
    f'pretraining validation loss {base["pretrain_val_loss"]:.4f}; {pairs["train"]} training '
    f'and {pairs["held_out"]} held-out pairs ({pairs["response_tokens_held_out"]} held-out '
    'response tokens).',
    '',
    results['grid_table'],
    '',
  ]
  rows = []
  for setup, s in best.items():
    edge = ' (grid edge)' if s['lr_on_grid_edge'] else ''
    rows.append(
      (
        setup,
        f'{s["best_lr"]:g}{edge}',
        str(len(s['seeds'])),
        tables.format_loss(s['final_val_loss']),
        tables.format_loss(s['rare_val_loss']),
        f'{forgetting[setup]["mean"]:+.4f}',
        tables.format_bytes(s['table_state_bytes']),
        tables.format_bytes(s['model_state_bytes']),
      )
    )
  lines.append(
    tables.markdown_table(
      (
        'setup',
        'best lr',
        'seeds',
        'held-out response loss',
        'rare tokens',
        'forgetting (pretrain val, after - before)',
        'opt. state, tables',
        'opt. state, model',
      ),
      rows,
    )
  )
  for reference, paired in results['paired'].items():
    rows = [
      (
        other,
        str(len(d['seeds'])),
        tables.format_interval(d['final_val_loss']),
        d['final_val_loss']['verdict'],
        tables.format_interval(d['rare_val_loss']),
        tables.format_interval(d[f'{FORGETTING}_loss']),
        d[f'{FORGETTING}_loss']['verdict'],
      )
      for other, d in paired.items()
    ]
    if rows:
      lines += [
        '',
        tables.markdown_table(
          (
            f'{reference} minus',
            'seeds',
            'held-out response loss [95% CI]',
            'verdict',
            'rare tokens [95% CI]',
            'pretrain val loss [95% CI]',
            'verdict',
          ),
          rows,
        ),
      ]
  targets = results['targets']
  if targets:
    lines.append('')
    for name, target in targets.items():
      if isinstance(target, dict):
        diff = target['difference']
        lines.append(
          f'- {name}: {"met" if target["met"] else "not met"} '
          f'({tables.format_interval(diff)}, {diff["verdict"]})'
        )
      else:
        lines.append(f'- {name}: {target:.0f}x')
  return '\n'.join(lines)


def plot_frontier(results: dict, path: Path) -> None:
  """Held-out response loss (mean, 95% interval) against the tables' optimizer-state bytes."""
  import matplotlib.pyplot as plt

  best = results['best']
  nonzero = [s['table_state_bytes'] for s in best.values() if s['table_state_bytes']]
  # No state (frozen tables) has no place on a log axis: it is drawn a decade left of the least.
  zero_at = min(nonzero) / 10 if nonzero else 1.0
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for setup, s in best.items():
    parsed = Setup.parse(setup)
    loss = s['final_val_loss']
    low, high = loss['ci95']
    x = s['table_state_bytes'] or zero_at
    error = None if low is None else [[loss['mean'] - low], [high - loss['mean']]]
    ax.errorbar(
      x,
      loss['mean'],
      yerr=error,
      fmt='o' if parsed.body == 'adamw' else 's',
      mfc=None if parsed.body == 'adamw' else 'white',
      color=registry.TABLE_OPTIMIZERS[parsed.tables].color,
      capsize=3,
      label=setup,
    )
  base = results['base_model']['held_out_response_loss']
  ax.axhline(base, color='black', lw=0.8, ls=':', label='base model')
  ax.set_xscale('log')
  high = max(nonzero or [zero_at]) * 3
  ax.set_xlim(zero_at / 3, high)
  # Ticks at 1 KiB times powers of 8, so that their labels are round byte counts.
  ticks = [1024 * 8.0**k for k in range(-4, 12) if zero_at * 3 < 1024 * 8.0**k < high]
  ax.set_xticks([zero_at, *ticks])
  ax.set_xticklabels(['0', *[tables.format_bytes(t) for t in ticks]])
  ax.minorticks_off()
  ax.set_xlabel("token tables' optimizer state (log scale)")
  ax.set_ylabel('held-out response loss (95% interval)')
  ax.set_title('SFT: memory against quality (filled: AdamW body; open: body frozen)')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def run_sft(config: SFTConfig, verbose: bool = True) -> dict:
  """Runs (or resumes) the comparison; returns and writes its results."""
  config = config.filled()
  # Every setting is checked before the base model is read or trained.
  search.check_search(config.lrs, config.extend, config.seeds, config.best_seeds)
  resolve(config)
  started = time.perf_counter()
  comparison, base_model = build_comparison(config, verbose=verbose)
  out = Path(config.out)
  summary = search.run_search(
    dataclasses.replace(config, out=None),
    verbose=verbose,
    comparison=comparison,
    settings={'task': TASK, 'base_model': base_model['key']},
    runs_dir=out / 'runs',
  )
  results = {
    'task': TASK,
    'base_model': base_model,
    **{k: summary[k] for k in ('config', 'settings', 'grid', 'best', 'runs', 'grid_table')},
    **compare(summary, base_model),
    'data': summary['data'],
    'environment': summary['environment'],
    'total_time_s': time.perf_counter() - started,
  }
  results['tables'] = format_tables(results)
  results_lib.write_json(out / 'results.json', results)
  (out / 'results.md').write_text(results['tables'] + '\n')
  plot_frontier(results, out / 'frontier.png')
  best = results['best']
  plots.plot_curves(
    [r for r in results['runs'] if r['lr'] == best[r['setup']]['best_lr']],
    out / 'curves.png',
    title='SFT from the base model: held-out response loss, each setup at its best rate',
  )
  if verbose:
    print('\n' + results['tables'])
    print(f'[sft] wrote {out / "results.json"}, results.md, frontier.png and curves.png')
  return results


def build_parser() -> cli.Parser:
  return cli.parser_for(
    SFTConfig,
    PROG,
    'Fine-tunes the pretrained base model on docstring -> body pairs under each table '
    'optimizer, each at its best learning rate, and compares them.',
    skip=('lr', 'lr_for', 'table_lr', 'table_lr_for', 'sweep'),
  )


def main(argv: Sequence[str] | None = None) -> dict:
  args = build_parser().parse_args(argv)
  return cli.run_command(PROG, lambda: run_sft(cli.from_args(args, SFTConfig)))


if __name__ == '__main__':
  main()
