"""What Ember frees in a whole train step of published models, from XLA's memory analysis.

For each published decoder shape (``models.nets.published``: GPT-2 small, Llama-3-8B, Gemma-3-1B,
Qwen2.5-0.5B), each precision and each optimizer setup (``models.bench.memory.precision``:
``adamw``, ``ember``, ``adafactor``; float32 statistics in every precision), the whole train step is
compiled ahead of time from abstract parameters and its memory read from XLA's analysis
(``models.bench.memory.step_memory``); nothing is allocated and nothing runs, so an 8B-parameter
model is measured on a laptop.

Also measured: the largest batch that fits in a memory budget
(``models.bench.memory.batch_search``), the estimate against the resident memory of really running
the step (``small`` GPT of ``models.nets.gpt``; ``models.bench.memory.real_step``), and the same
analysis per device on 8 virtual CPU devices with a fully sharded layout
(``models.training.layouts``). Every shape and layout is analyzed (``models.bench.memory.analysis``)
in a process of its own (``models.bench.memory.child_process``; ``--jobs`` at a time); the sharded
ones start JAX with the virtual devices. This module runs them and writes the JSON of every number;
``models.bench.memory.report`` makes the Markdown tables and a bar plot per model.

Which numbers hold where: optimizer-state bytes, arguments (parameters + state + the token batch),
outputs and donated (aliased) bytes follow from shapes and dtypes alone and are the same on every
backend. Temporaries (gradients, activations, the optimizer's scratch) are XLA:CPU's buffer
assignment; a GPU or TPU compiler fuses and schedules differently, so take them as an estimate.

Run::

  python -m models.bench.memory --out models/results/bench_memory
  python -m models.bench.memory --models gpt2 --precisions bfloat16 --devices 0
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import functools
import os
from pathlib import Path
import resource
import sys
import time

import jax

from models import cli
from models.bench.memory.analysis import Measured, analysis_child, temp_checks
from models.bench.memory.child_process import run_children
from models.bench.memory.precision import PRECISIONS, SETUPS
from models.bench.memory.real_step import reality_child
from models.bench.memory.report import bar_plot, report
from models.cli import ConfigError, option
from models.nets import published
from models.reporting import results as results_lib

PROG = 'python -m models.bench.memory'
DEFAULT_BUDGETS_GIB = (16.0, 24.0, 80.0)


@dataclasses.dataclass(frozen=True)
class MemoryBenchConfig:
  """The memory benchmark's settings."""

  models: tuple[str, ...] = option(
    tuple(published.SHAPES), f'published shapes to analyze, from {", ".join(published.SHAPES)}'
  )
  optimizers: tuple[str, ...] = option(
    SETUPS, 'optimizer setups (the body always gets AdamW)', choices=SETUPS
  )
  precisions: tuple[str, ...] = option(
    tuple(PRECISIONS),
    'parameter dtype; optimizer statistics are float32 in both',
    choices=tuple(PRECISIONS),
  )
  batch: int = option(8, 'sequences per device of the reported step')
  seq_len: int = option(1024, 'tokens per sequence')
  budgets: tuple[float, ...] = option(
    DEFAULT_BUDGETS_GIB, 'memory budgets (GiB per device) for the largest-batch search'
  )
  devices: int = option(
    8, 'virtual CPU devices of the FSDP analysis, run in a subprocess (0 or 1: skip it)'
  )
  fsdp_budgets: tuple[float, ...] = option(
    (80.0,), 'memory budgets (GiB per device) searched in the FSDP analysis', nargs='*'
  )
  jobs: int = option(2, 'analyses run at once, each in its own process')
  remat: bool = option(True, "recompute each layer's activations in the backward pass")
  reality_check: bool = option(
    True,
    "also run the small GPT's step and compare its resident memory with the analysis (one "
    'device, Linux)',
  )
  out: str | None = option(
    None, 'folder for bench_memory.json, bench_memory.md and one PNG per model (default: none)'
  )


def build_parser() -> cli.Parser:
  return cli.parser_for(
    MemoryBenchConfig,
    PROG,
    'Memory of a whole train step at published model shapes under AdamW, Ember and '
    "Adafactor, from XLA's memory analysis of the compiled step (compile only).",
  )


def check(args: MemoryBenchConfig) -> None:
  """Raises ``ConfigError`` naming the first setting that cannot be run."""
  if args.batch < 1:
    raise ConfigError(f'--batch must be at least 1, got {args.batch}')
  if args.seq_len < 1:
    raise ConfigError(f'--seq-len must be at least 1, got {args.seq_len}')
  for model in args.models:
    if model not in published.SHAPES:
      raise ConfigError(
        f'--models: unknown model {model!r}; choose from {", ".join(published.SHAPES)}'
      )
    positions = published.SHAPES[model].max_positions
    if positions and args.seq_len > positions:
      raise ConfigError(
        f"--seq-len {args.seq_len} is longer than {model}'s {positions} learned "
        'positions; pass --seq-len at most that, or leave that model out (--models)'
      )
  for flag, budgets in (('--budgets', args.budgets), ('--fsdp-budgets', args.fsdp_budgets)):
    if any(b <= 0 for b in budgets):
      raise ConfigError(f'{flag} must be positive GiB, got {list(budgets)}')
  if args.devices < 0:
    raise ConfigError(f'--devices must be 0 or more, got {args.devices}')
  if args.jobs < 1:
    raise ConfigError(f'--jobs must be at least 1, got {args.jobs}')
  if args.reality_check and not Path('/proc/self/clear_refs').exists():
    raise ConfigError('--reality-check reads /proc/self (Linux); pass --no-reality-check')


def main(argv: Sequence[str] | None = None) -> dict:
  args = build_parser().parse_args(argv)
  return cli.run_command(PROG, lambda: run(cli.from_args(args, MemoryBenchConfig), argv))


def run(args: MemoryBenchConfig, argv: Sequence[str] | None = None) -> dict:
  """Runs the benchmark; returns (and, with ``args.out``, writes) its results."""
  check(args)
  start = time.perf_counter()
  options = dict(
    optimizers=args.optimizers, batch=args.batch, seq_len=args.seq_len, remat=args.remat
  )
  shapes = [published.SHAPES[name] for name in args.models]
  layouts = [1] + ([args.devices] if args.devices > 1 else [])
  starts = []
  for devices in reversed(layouts):  # The sharded analyses take longest: first.
    for shape in shapes:
      for precision in args.precisions:
        starts.append(
          functools.partial(
            analysis_child,
            shape,
            [precision],
            devices=devices,
            budgets_gib=args.budgets if devices == 1 else args.fsdp_budgets,
            **options,
          )
        )
  if args.reality_check:
    starts += [functools.partial(reality_child, name) for name in args.optimizers]
  results = run_children(starts, args.jobs)
  n_analyses = len(starts) - (len(args.optimizers) if args.reality_check else 0)
  measured = [Measured.from_json(m) for r in results[:n_analyses] for m in r]
  single = [m for m in measured if m.devices == 1]
  sharded = [m for m in measured if m.devices > 1]
  order = {
    (s.name, p, o): i
    for i, (s, p, o) in enumerate(
      (s, p, o) for s in shapes for p in args.precisions for o in args.optimizers
    )
  }
  single.sort(key=lambda m: order[m.model, m.precision, m.optimizer])
  sharded.sort(key=lambda m: order[m.model, m.precision, m.optimizer])
  reality = (
    dict(zip(args.optimizers, results[n_analyses:], strict=True)) if args.reality_check else {}
  )
  checks = temp_checks(single + sharded)
  children = resource.getrusage(resource.RUSAGE_CHILDREN)
  own = resource.getrusage(resource.RUSAGE_SELF)
  results = {
    'command': ' '.join([PROG, *(argv if argv is not None else sys.argv[1:])]),
    'date': time.strftime('%Y-%m-%d'),
    'jax': jax.__version__,
    'machine': f'{os.cpu_count()}-core CPU',
    'config': {
      **options,
      'budgets_gib': list(args.budgets),
      'devices': args.devices,
      'fsdp_budgets_gib': list(args.fsdp_budgets),
      'jobs': args.jobs,
      'reality_preset': 'small',
    },
    'single': [m.to_json() for m in single],
    'sharded': [m.to_json() for m in sharded],
    'temp_checks': [dataclasses.asdict(c) for c in checks],
    'reality': reality,
    'wall_seconds': time.perf_counter() - start,
    'cpu_seconds': sum(u.ru_utime + u.ru_stime for u in (children, own)),
  }
  text = report(results)
  print(text)
  if args.out:
    out = results_lib.write_report(args.out, 'bench_memory', results, text)
    panels = {'one device': single}
    if sharded:
      panels[f'{args.devices} devices, FSDP, per device'] = sharded
    for shape in shapes:
      bar_plot(shape, panels, out / f'{shape.name}.png')
  return results


if __name__ == '__main__':
  try:
    main()
  except (RuntimeError, ValueError, OSError) as error:
    sys.exit(f'python -m models.bench.memory: error: {error}')
