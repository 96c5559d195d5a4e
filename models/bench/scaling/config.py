"""The scaling benchmark's settings, its folders, and the points and searches they select."""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
from pathlib import Path

from models.cli import ConfigError, option
from models.training import search
from models.training import sweep as sweep_lib
from models.training.config import corpus_option
from models.training.presets import Preset
from models.training.sweep import SWEEPS, Point, Sweep

DEFAULT_OUT = Path('models', 'results', 'bench_scaling')


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


def out_folder(config: ScalingConfig) -> Path:
  """``--out``, or the sweep's default results folder."""
  if config.out is not None:
    return Path(config.out)
  return DEFAULT_OUT if config.preset == 'full' else Path('out', 'bench_scaling', config.preset)


def _where(config: ScalingConfig) -> dict:
  """The checkpoints (one folder per sweep) and corpus settings of every search."""
  return {
    'checkpoint_dir': Path(config.checkpoint_dir) / config.preset,
    'text': config.text,
    'cache_dir': config.cache_dir,
  }


def point_config(
  sweep: Sweep, point: Point, config: ScalingConfig, out: Path
) -> tuple[search.SearchConfig, Preset]:
  """The learning-rate search of ``point`` (:func:`models.training.sweep.point_config`) with
  the corpus and checkpoints of ``config``, and the point's preset."""
  return sweep_lib.point_config(sweep, point, out, **_where(config))


def table_rate_config(
  sweep: Sweep, point: Point, config: ScalingConfig, out: Path, setup: str, body_lr: float
) -> tuple[search.SearchConfig, Preset]:
  """The search of ``setup``'s tables' own rate at ``point``, the body at ``body_lr``
  (:func:`models.training.sweep.table_rate_config`), with the corpus and checkpoints of
  ``config``."""
  return sweep_lib.table_rate_config(sweep, point, out, setup, body_lr, **_where(config))


def selected_points(
  sweep: Sweep, names: Sequence[str] | None, setups: Sequence[str] | None = None
) -> list[Point]:
  """The points named by ``--points`` (every point if None), each with only the ``--setups``
  it runs (all of them if None); points left without a setup are dropped.

  Raises:
    ConfigError: for a point the sweep lacks, or a setup none of the points chosen runs.
  """
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
