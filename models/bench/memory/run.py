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
ones start JAX with the virtual devices. This module runs them and reports: Markdown tables, a bar
plot per model, the JSON of every number.

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
from models.bench.memory.analysis import (
  GIB,
  TEMP_ALLOWANCE,
  Measured,
  TempCheck,
  analysis_child,
  temp_checks,
)
from models.bench.memory.child_process import run_children
from models.bench.memory.precision import PRECISIONS, SETUPS
from models.bench.memory.real_step import reality_child
from models.bench.memory.step_memory import StepMemory
from models.cli import ConfigError, option
from models.nets import published
from models.reporting import results as results_lib
from models.reporting.tables import format_bytes, markdown_table

PROG = 'python -m models.bench.memory'
DEFAULT_BUDGETS_GIB = (16.0, 24.0, 80.0)


# -- Report ----------------------------------------------------------------------------------


def _share(part: float, whole: float) -> str:
  return f'{100 * part / whole:.1f}%'


def _grouped(measured: Sequence[Measured]) -> dict[tuple[str, str], dict[str, Measured]]:
  groups: dict[tuple[str, str], dict[str, Measured]] = {}
  for m in measured:
    groups.setdefault((m.model, m.precision), {})[m.optimizer] = m
  return groups


def summary_table(measured: Sequence[Measured]) -> str:
  """Per model and precision: tables' share, state and step totals, what Ember saves."""
  rows = []
  for (_, precision), by_name in _grouped(measured).items():
    adamw, ember = by_name.get('adamw'), by_name.get('ember')
    if adamw is None or ember is None:
      continue
    shape = adamw.shape
    saved = adamw.step.total - ember.step.total
    rows.append(
      (
        shape.title,
        f'{shape.vocab_size:,} × {shape.d_model:,}{" (tied)" if shape.tied else ""}',
        _share(shape.table_params(), adamw.n_params),
        precision,
        f'{format_bytes(adamw.state.tables)} → {format_bytes(ember.state.tables)}',
        f'{format_bytes(adamw.state.model)} → {format_bytes(ember.state.model)}',
        ' / '.join(format_bytes(by_name[n].step.total) for n in SETUPS if n in by_name),
        f'{format_bytes(saved)} ({_share(saved, adamw.step.total)})',
      )
    )
  return markdown_table(
    (
      'model',
      'tables V × D',
      "tables' share of params",
      'precision',
      'opt. state, tables: AdamW → Ember',
      'opt. state, model: AdamW → Ember',
      'step total: ' + ' / '.join(n for n in SETUPS),
      "Ember saves (share of AdamW's step)",
    ),
    rows,
  )


def detail_table(measured: Sequence[Measured]) -> str:
  """Every compiled configuration at the reported batch."""
  rows = []
  for (model, precision), by_name in _grouped(measured).items():
    adamw = by_name.get('adamw')
    for name, m in by_name.items():
      saved = (
        ''
        if adamw is None or name == 'adamw'
        else (
          f'{format_bytes(adamw.step.total - m.step.total)} '
          f'({_share(adamw.step.total - m.step.total, adamw.step.total)})'
        )
      )
      rows.append(
        (
          model,
          precision,
          name,
          format_bytes(m.state.tables),
          format_bytes(m.state.model),
          format_bytes(m.step.argument),
          format_bytes(m.step.output),
          format_bytes(m.step.alias),
          format_bytes(m.step.temp),
          format_bytes(m.step.total),
          saved,
        )
      )
  return markdown_table(
    (
      'model',
      'precision',
      'optimizer',
      'opt. state, tables',
      'opt. state, model',
      'arguments',
      'outputs',
      'aliased (donated)',
      'temporaries (XLA:CPU)',
      'step total',
      'saved vs AdamW',
    ),
    rows,
  )


def budget_table(measured: Sequence[Measured]) -> str:
  """Largest batch per budget: sequences per device and tokens per step."""
  budgets = sorted({b for m in measured for b in m.fits})

  def cell(m: Measured, budget: float) -> str:
    fit = m.fits[budget]
    if not fit:
      return 'batch 1 does not fit'
    tokens = fit * m.devices * m.seq_len
    per_device = ' per device' if m.devices > 1 else ''
    return f'{fit} seq{per_device} = {tokens:,} tokens'

  rows = [
    (m.model, m.precision, m.optimizer, *(cell(m, b) for b in budgets)) for m in measured if m.fits
  ]
  unit = 'per device' if any(m.devices > 1 for m in measured) else ''
  return markdown_table(
    ('model', 'precision', 'optimizer', *(f'{b:g} GiB {unit}'.strip() for b in budgets)), rows
  )


def temp_check_table(checks: Sequence[TempCheck]) -> str:
  rows = [
    (
      c.model,
      c.precision,
      str(c.devices),
      str(c.worst_batch),
      format_bytes(c.extra_temp) if c.extra_temp >= 0 else '-' + format_bytes(-c.extra_temp),
      format_bytes(c.largest_table),
      f'{100 * c.share:.2f}%',
      'yes' if c.ok else '**no**',
    )
    for c in checks
  ]
  return markdown_table(
    (
      'model',
      'precision',
      'devices',
      'worst batch',
      'Ember temp − AdamW temp',
      'largest table (per device)',
      'share of table',
      f'≤ {TEMP_ALLOWANCE:.0%}',
    ),
    rows,
  )


def reality_table(reality: dict[str, dict]) -> str:
  rows = []
  for name, r in reality.items():
    e = StepMemory(**r['estimate'])
    step_estimate = e.temp + e.output - e.alias
    later = max(r['step_rss'][1:] or r['step_rss'])
    rows.append(
      (
        name,
        format_bytes(e.argument),
        format_bytes(r['arguments_rss']),
        format_bytes(step_estimate),
        format_bytes(r['step_rss'][0]),
        format_bytes(later),
        f'{format_bytes(later - step_estimate)} ({_share(later - step_estimate, step_estimate)})',
      )
    )
  return markdown_table(
    (
      'optimizer',
      'arguments: analysis',
      'arguments: RSS growth',
      'step: temporaries + new outputs (analysis)',
      'step 1: peak RSS growth',
      'later steps: peak RSS growth (max)',
      'later steps − analysis',
    ),
    rows,
  )


def bar_plot(
  shape: published.DecoderShape, layouts: dict[str, Sequence[Measured]], path: Path
) -> None:
  """One PNG per model: stacked bars of the step's memory per precision and optimizer, a panel
  per layout (one device; per device of the FSDP layout), and the searched budgets as lines."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  layouts = {title: [m for m in ms if m.shape == shape] for title, ms in layouts.items()}
  layouts = {title: ms for title, ms in layouts.items() if ms}
  fig, axes = plt.subplots(1, len(layouts), figsize=(6.5 * len(layouts), 4.6), squeeze=False)
  parts = (
    'parameters',
    'opt. state: tables',
    'opt. state: rest',
    'temporaries (XLA:CPU)',
    'batch, loss',
  )
  colors = ('tab:gray', 'tab:red', 'tab:orange', 'tab:blue', 'black')
  for ax, (title, ms) in zip(axes[0], layouts.items(), strict=True):
    labels, stacks = [], []
    for m in ms:
      rest = m.state.model - m.state.tables
      other = m.step.total - m.params - m.state.model - m.step.temp
      labels.append(f'{m.optimizer}\n{m.precision.replace("bfloat16", "bf16")}')
      stacks.append((m.params, m.state.tables, rest, m.step.temp, max(other, 0)))
    bottom = [0.0] * len(stacks)
    for index, (part, color) in enumerate(zip(parts, colors, strict=True)):
      heights = [stack[index] / GIB for stack in stacks]
      ax.bar(labels, heights, bottom=bottom, color=color, label=part)
      bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    for x, top in enumerate(bottom):
      ax.text(x, top, f'{top:.1f}', ha='center', va='bottom', fontsize=8)
    top = 1.1 * max(bottom)
    for budget in sorted({b for m in ms for b in m.fits}):
      if budget * GIB < top * GIB:
        ax.axhline(budget, color='black', linestyle='--', linewidth=0.8)
        ax.text(len(stacks) - 0.5, budget, f'{budget:g} GiB', ha='right', va='bottom', fontsize=7)
    ax.set_ylim(0, top)
    ax.set_ylabel('GiB' + (' per device' if ms[0].devices > 1 else ''))
    ax.set_title(f'{title}: batch {ms[0].batch} × {ms[0].seq_len} tokens per device', fontsize=9)
    ax.tick_params(axis='x', labelsize=8)
    ax.grid(axis='y', alpha=0.3)
  handles, names = axes[0][0].get_legend_handles_labels()
  fig.legend(handles, names, loc='lower center', ncol=len(parts), fontsize=8, frameon=False)
  fig.suptitle(f'Train-step memory, {shape.title}', fontsize=10)
  fig.tight_layout(rect=(0, 0.06, 1, 1))
  fig.savefig(path, dpi=110)
  plt.close(fig)


def report(results: dict) -> str:
  """The whole run as Markdown."""
  single = [Measured.from_json(m) for m in results['single']]
  sharded = [Measured.from_json(m) for m in results['sharded']]
  cfg = results['config']
  lines = [
    '# Train-step memory at published model shapes',
    '',
    f'`{results["command"]}`: {results["date"]}, jax {results["jax"]}, {results["machine"]}, '
    f'{results["wall_seconds"] / 60:.1f} min wall, {results["cpu_seconds"] / 60:.1f} CPU-minutes.',
    f'Batch {cfg["batch"]} sequences of {cfg["seq_len"]} tokens per device, '
    f'{"layers rematerialized" if cfg["remat"] else "no rematerialization"}, parameters and '
    'optimizer state donated. State, arguments, outputs and aliased bytes are exact on every '
    "backend; temporaries are XLA:CPU's.",
    '',
    '## One device',
    '',
    summary_table(single),
    '',
    detail_table(single),
    '',
    '### Largest batch that fits',
    '',
    budget_table(single),
  ]
  if sharded:
    lines += [
      '',
      f'## {sharded[0].devices} devices, FSDP layout (bytes per device)',
      '',
      detail_table(sharded),
    ]
  if any(m.fits for m in sharded):
    lines += ['', '### Largest batch that fits (per device)', '', budget_table(sharded)]
  lines += [
    '',
    "## Ember's temporaries against AdamW's",
    '',
    temp_check_table([TempCheck(**c) for c in results['temp_checks']]),
  ]
  if results.get('reality'):
    probe = next(iter(results['reality'].values()))['matmul_probe']
    lines += [
      '',
      f'## Analysis against a real run ({cfg["reality_preset"]} GPT of `models.nets.gpt`, '
      'one device)',
      '',
      reality_table(results['reality']),
      '',
      f"The LM head's matmul alone, `sum(h @ w)` with h {probe['shape'][0]} and w "
      f'{probe["shape"][1]}: {format_bytes(probe["temp"])} of temporaries in the analysis, '
      f'{format_bytes(probe["rss"])} of peak RSS growth.',
    ]
  return '\n'.join(lines) + '\n'


# -- Command line ----------------------------------------------------------------------------


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
