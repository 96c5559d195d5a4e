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
(``models.training.search``: a grid on ``--seeds`` that grows until it brackets the best, then
``--best-seeds`` there). Reported per setup: the held-out response loss, the pretraining
domain's validation loss after fine-tuning (forgetting) and the tables' optimizer-state bytes;
Ember is compared with each other setup of its body seed by seed, with 95% intervals.

The task and the base model are ``models.training.finetune``'s (also used by
``models.bench.tunix_sft``); the comparison, tables and plots are ``models.reporting.sft``'s.

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

from models import cli
from models.cli import option
from models.optim import registry
from models.reporting import sft as sft_report
from models.training import finetune, search
from models.training.config import resolve

PROG = 'python -m models.sft'
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
DEFAULT_OUT = Path('models', 'results', 'sft')


@dataclasses.dataclass(frozen=True)
class SFTConfig(finetune.FineTuneOptions, search.SearchConfig):
  """The learning-rate search's settings, for fine-tuning from the pretrained base model."""

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
  out: str | None = option(
    None,
    'folder for results.json, the tables, plots and runs/ (default: models/results/sft '
    'for the small preset, out/sft/<preset> otherwise)',
  )
  checkpoint_dir: str | None = option(
    None, 'Orbax checkpoints of unfinished runs (default: out/sft/checkpoints/<preset>)'
  )

  def filled(self) -> SFTConfig:
    """The settings with the preset's fine-tuning defaults where none was given, and the
    default folders."""
    filled = super().filled()
    out = self.out
    if out is None:
      out = str(DEFAULT_OUT if self.preset == 'small' else Path('out', 'sft', self.preset))
    return dataclasses.replace(
      filled,
      out=out,
      checkpoint_dir=self.checkpoint_dir or str(Path('out', 'sft', 'checkpoints', self.preset)),
    )


def run_sft(config: SFTConfig, verbose: bool = True) -> dict:
  """Runs (or resumes) the comparison; returns and writes its results."""
  config = config.filled()
  # Every setting is checked before the base model is read or trained.
  search.check_search(config.lrs, config.extend, config.seeds, config.best_seeds)
  resolve(config)
  started = time.perf_counter()
  comparison, base_model = finetune.build_comparison(config, verbose=verbose)
  out = Path(config.out)
  summary = search.run_search(
    dataclasses.replace(config, out=None),
    verbose=verbose,
    comparison=comparison,
    settings={'task': finetune.TASK, 'base_model': base_model['key']},
    runs_dir=out / 'runs',
  )
  results = {
    'task': finetune.TASK,
    'base_model': base_model,
    **{k: summary[k] for k in ('config', 'settings', 'grid', 'best', 'runs', 'grid_table')},
    **sft_report.compare(summary, base_model),
    'data': summary['data'],
    'environment': summary['environment'],
    'total_time_s': time.perf_counter() - started,
  }
  results['tables'] = sft_report.format_tables(results)
  sft_report.write(results, out, verbose)
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
