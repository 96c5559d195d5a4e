"""The memory benchmark's report (``models.bench.memory.run``): Markdown tables and a bar plot.

:func:`report` turns the benchmark's results (the JSON it writes) into Markdown: per model and
precision what Ember saves, every compiled configuration, the largest batch per budget, Ember's
temporaries against AdamW's and the analysis against a real run. :func:`bar_plot` draws one
model's step memory as stacked bars, a panel per layout::

  text = report(results)  # results = run(config), or read back from bench_memory.json
  bar_plot(published.SHAPES['gpt2'], {'one device': single}, Path('gpt2.png'))
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from models.bench.memory.analysis import GIB, TEMP_ALLOWANCE, Measured, TempCheck
from models.bench.memory.precision import SETUPS
from models.bench.memory.step_memory import StepMemory
from models.nets import published
from models.reporting.tables import format_bytes, markdown_table


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
  """Per model, precision and layout: Ember's extra temporaries against its allowance."""
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
  """Per optimizer: the analysis's arguments and step memory against the measured RSS growth."""
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
