"""The scaling sweep's points: model and batch sizes, the budget rule, the learning-rate grids.

A *point* is a model size at a batch size. A :class:`Sweep` names its sizes from
:data:`models.training.presets.SIZES` and its setups from the registry, and says how many tokens a
run of each point trains on, where its learning-rate grid starts and which points also run Adam
and Ember tables beside a Muon body. :func:`point_config` turns a point into the
learning-rate search (:mod:`models.training.search`) that runs it; :func:`table_rate_config`
into the search of its tables' own rate.

The scaling benchmark (``models.bench.scaling``) runs every point of a sweep; the row-steps
program (``models.bench.row_steps``) measures the steps of one.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from flax import nnx
import jax
import numpy as np

from models.nets.gpt import GPT, GPTConfig
from models.optim.registry import Setup, default_setups
from models.training import search
from models.training.presets import SIZES, Preset

# Ember's peers on the tables: every other table optimizer the sweep compares, in registry order.
TABLE_PEERS = tuple(name for name in default_setups('scaling') if name != 'ember')
MUON_PAIR = ('ember+muon', 'adamw+muon')
# (Ember tables, Adam tables) beside each body: the table-rate sweeps compare within a pair.
RATE_PAIRS = (('ember', 'adamw'), MUON_PAIR)
TABLE_RATES = 'table_rates'  # A point's sub-folder of its tables-only rate sweeps.


@dataclasses.dataclass(frozen=True)
class Point:
  """One model size at one batch size, and the setups it runs."""

  size: str
  batch_size: int
  setups: tuple[str, ...]

  @property
  def name(self) -> str:
    """``<size>-b<batch>``, e.g. ``d128-b8``: the folder of the point's saved runs."""
    return f'{self.size}-b{self.batch_size}'


@dataclasses.dataclass(frozen=True)
class Sweep:
  """The sizes, the points and the budget rule of a scaling sweep.

  Attributes:
    sizes: the sweep's size names (those of its points, e.g. ``d128`` in ``d128-b8``), each with
      the name of its model in :data:`~models.training.presets.SIZES` (``vocab_size`` is the
      sweep's); the first is the smallest.
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

  sizes: dict[str, str]
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

  def model(self, size: str) -> GPTConfig:
    """The shape of the sweep's size ``size``, from :data:`~models.training.presets.SIZES`."""
    return SIZES[self.sizes[size]]

  def points(self) -> list[Point]:
    """Every point once, in ``order``: the size axis and the batch axis share one.

    Example:
      >>> [p.name for p in SWEEPS['tiny'].points()]
      ['t16-b2', 't32-b2', 't16-b4']
    """
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
    config = dataclasses.replace(self.model(size), vocab_size=self.vocab_size)
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
    width = self.model(self.base_size).d_model / self.model(point.size).d_model
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
    """The training settings of ``point``: its model, batch and budget, warm-up 5% of the steps,
    the grid's centre as the rate."""
    steps = self.steps(point)
    return Preset(
      model=self.model(point.size),
      batch_size=point.batch_size,
      seq_len=self.seq_len,
      steps=steps,
      lr=self.lr_centre(point),
      warmup_steps=max(1, round(0.05 * steps)),
      eval_every=max(1, steps // 4),
      eval_batches=max(1, self.eval_sequences // point.batch_size),
      vocab_size=self.vocab_size,
    )


SWEEPS: dict[str, Sweep] = {
  'full': Sweep(
    # The point names' sizes are their widths; saved runs are in folders by those names.
    sizes={'d64': 'd64', 'd96': 'd96', 'd128': 'small', 'd192': 'd192'},
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
  # Seconds on a CPU: what CI runs.
  'tiny': Sweep(
    sizes={'t16': 't16', 't32': 't32'},
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


def point_config(
  sweep: Sweep,
  point: Point,
  out: Path,
  *,
  checkpoint_dir: Path | None = None,
  text: str | None = None,
  cache_dir: str | None = None,
) -> tuple[search.SearchConfig, Preset]:
  """The learning-rate search of ``point``, and its preset (:meth:`Sweep.preset`).

  Args:
    sweep: the sweep of ``point``.
    point: the point.
    out: the sweep's results folder; the point's are in ``out / point.name``.
    checkpoint_dir: the sweep's checkpoints; the point's are in ``checkpoint_dir /
      point.name`` (``None``: no checkpoints).
    text, cache_dir: the corpus's settings (``models.training.config.corpus_option``).

  Returns:
    ``(search settings, preset)``: every setup of ``point`` on the starting grid around
    :meth:`Sweep.lr_centre`, on the sweep's seeds.
  """
  preset = sweep.preset(point)
  centre = preset.lr
  bench = search.SearchConfig(
    preset=point.size,
    setups=point.setups,
    seeds=sweep.grid_seeds,
    best_seeds=sweep.best_seeds,
    lrs=tuple(centre * m for m in sweep.grid),
    extend=sweep.extend,
    text=text,
    cache_dir=cache_dir,
    out=str(out / point.name),
    checkpoint_dir=None if checkpoint_dir is None else str(checkpoint_dir / point.name),
    checkpoint_every=max(1, preset.steps // 3),
    progress=False,
  )
  return bench, preset


def table_rate_config(
  sweep: Sweep,
  point: Point,
  out: Path,
  setup: str,
  body_lr: float,
  *,
  checkpoint_dir: Path | None = None,
  text: str | None = None,
  cache_dir: str | None = None,
) -> tuple[search.SearchConfig, Preset]:
  """The search of ``setup``'s tables' own rate at ``point``: the body at ``body_lr``, the
  tables' rate on ``table_rate_ratios`` of it, in the point's :data:`TABLE_RATES` sub-folders
  (the other arguments as for :func:`point_config`)."""
  bench, preset = point_config(
    sweep, point, out, checkpoint_dir=checkpoint_dir, text=text, cache_dir=cache_dir
  )
  bench = dataclasses.replace(
    bench,
    setups=(setup,),
    sweep='table-lr',
    lr_for={setup: body_lr},
    lrs=tuple(body_lr * ratio for ratio in sweep.table_rate_ratios),
    out=str(out / point.name / TABLE_RATES),
    checkpoint_dir=None
    if bench.checkpoint_dir is None
    else str(Path(bench.checkpoint_dir) / TABLE_RATES),
  )
  return bench, preset


def body_rates(point: Point, best: dict[str, float]) -> dict[str, float]:
  """The body's rate of each setup's table-rate sweep: the best rate (``best``, per setup) of
  Adam tables beside the same body, for the ``RATE_PAIRS`` that ``point`` runs.

  Example:
    >>> point = Point('t16', 2, ('adamw', 'ember', 'ember+muon', 'adamw+muon'))
    >>> body_rates(point, {'adamw': 0.01, 'ember': 0.02, 'adamw+muon': 0.04})
    {'ember': 0.01, 'adamw': 0.01, 'ember+muon': 0.04, 'adamw+muon': 0.04}
  """
  rates = {}
  for ember_setup, adam_setup in RATE_PAIRS:
    if {ember_setup, adam_setup} <= set(point.setups) and adam_setup in best:
      rates[ember_setup] = rates[adam_setup] = best[adam_setup]
  return rates
