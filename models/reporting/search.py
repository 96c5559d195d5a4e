"""The report of a learning-rate search (``models.training.search``): its tables printed, and
``bench.json``, ``bench.md`` and ``loss_curves.png`` written."""

from __future__ import annotations

from pathlib import Path

from models.reporting import plots
from models.reporting import results as results_lib

SWEEPS = {'lr': 'lr', 'table-lr': 'table_lr'}  # --sweep value -> the run's swept field.


def report(results: dict, out_dir: Path | None, verbose: bool = True) -> None:
  """Prints the tables and writes ``bench.json``, ``bench.md`` and ``loss_curves.png``."""
  tables = '\n\n'.join(
    results[key] for key in ('grid_table', 'table', 'paired_table') if results[key]
  )
  if results.get('lr_rule'):
    tables += (
      f"\n\nEmber's best learning rate is {results['lr_rule']:.3g}x AdamW's "
      f'(sweep: {results["sweep"]}).'
    )
  if verbose:
    print('\n' + tables)
    if 'total_time_s' in results:
      print(f'\n[bench] {len(results["runs"])} runs in {results["total_time_s"]:.0f} s')
  if out_dir is None:
    return
  out_dir.mkdir(parents=True, exist_ok=True)
  results_lib.write_json(out_dir / 'bench.json', results)
  (out_dir / 'bench.md').write_text(tables + '\n')
  best = results['best']
  key = SWEEPS[results['sweep']]
  plots.plot_curves(
    [r for r in results['runs'] if r[key] == best[r['setup']]['best_lr']],
    out_dir / 'loss_curves.png',
    title=f'GPT {results["config"]["preset"]}, each setup at its best learning rate',
  )
  if verbose:
    print(f'[bench] wrote {out_dir / "bench.json"}, bench.md and loss_curves.png')
