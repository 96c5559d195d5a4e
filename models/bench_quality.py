"""Quality benchmark: each optimizer setup at its own best learning rate, over several seeds.

    python -m models.bench_quality                                   # small preset, defaults
    python -m models.bench_quality --lrs 1e-3 3e-3 1e-2 --seeds 0 1 2 --steps 300 --out DIR

For every learning rate of the grid the main job (``models.train.run``) trains every setup on every
seed; within a seed all setups and learning rates start from the same initialization and see the
same batches. The learning rate is the shared peak rate of the setup (body and token tables alike;
the body is AdamW in every setup). Each setup is then reported at the grid point with the lowest
mean final validation loss over the seeds, as mean ± std (population std over seeds) of the final
validation loss and of the rare-token validation loss. A best learning rate on the edge of the grid
is flagged: the grid should be widened on that side.

Writes ``bench.json`` (every run, the grid, the selection) and ``bench.md`` (the tables) to
``--out``. Accepts the main job's flags (preset, steps, text, ...), except the learning-rate ones.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import json
from pathlib import Path
import time

import numpy as np

from models import train as train_lib

DEFAULT_LRS = (1e-3, 3e-3, 1e-2)
DEFAULT_SEEDS = (0, 1, 2)


def run_benchmark(config: train_lib.TrainConfig, lrs: Sequence[float] = DEFAULT_LRS) -> dict:
  """Sweeps ``lrs`` for every setup and seed of ``config``; returns the benchmark results.

  Returns:
    ``{"config", "lrs", "grid", "best", "runs", "table", "grid_table"}``: ``grid[setup][lr]``
    is the per-setup summary at that learning rate (``models.train.summarize``), ``best[setup]``
    the summary at the setup's best learning rate plus ``"best_lr"`` and ``"lr_on_grid_edge"``.
  """
  cfg = config.resolved()
  out_dir = Path(cfg.out) if cfg.out else None
  corpus = train_lib.load_corpus(cfg)
  started = time.perf_counter()
  lrs = sorted(float(lr) for lr in lrs)
  runs, grid = [], {setup: {} for setup in cfg.setups}
  for lr in lrs:
    if cfg.verbose:
      print(f"\n[bench] learning rate {lr:g}", flush=True)
    sub = dataclasses.replace(cfg, lr=lr, table_lr=None, setup_lr={}, setup_table_lr={}, out=None)
    res = train_lib.run(sub, corpus=corpus)
    runs.extend(res["runs"])
    for setup, summary in res["summary"].items():
      grid[setup][lr] = summary
  best = {}
  for setup, by_lr in grid.items():
    best_lr = min(by_lr, key=lambda lr: _loss_key(by_lr[lr]))
    best[setup] = {
      **by_lr[best_lr],
      "best_lr": best_lr,
      "lr_on_grid_edge": len(lrs) > 1 and best_lr in (lrs[0], lrs[-1]),
    }
  results = {
    "config": dataclasses.asdict(cfg),
    "lrs": lrs,
    "grid": {s: {str(lr): v for lr, v in g.items()} for s, g in grid.items()},
    "best": best,
    "runs": runs,
    "table": format_best(best),
    "grid_table": format_grid(grid, lrs),
    "data": {k: v for k, v in corpus.info.items() if k != "val_file_list"},
    "total_time_s": time.perf_counter() - started,
  }
  if cfg.verbose:
    print("\n" + results["grid_table"] + "\n\n" + results["table"])
    print(f"\n[bench] {len(runs)} runs in {results['total_time_s']:.0f}s")
  if out_dir is not None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps(results, indent=1))
    (out_dir / "bench.md").write_text(results["grid_table"] + "\n\n" + results["table"] + "\n")
    train_lib.plot_curves(
      [r for r in runs if r["lr"] == best[r["setup"]]["best_lr"]],
      out_dir / "loss_curves.png",
      title=f"GPT {cfg.preset}, each setup at its best learning rate",
    )
    if cfg.verbose:
      print(f"[bench] wrote {out_dir / 'bench.json'}, bench.md and loss_curves.png")
  return results


def _loss_key(summary: dict) -> float:
  """Mean final validation loss, with a diverged grid point (NaN) ranked last."""
  loss = summary["final_val_loss"]
  return float("inf") if np.isnan(loss) else loss


def format_best(best: dict) -> str:
  """Markdown table: each setup at its own best learning rate, mean ± std over seeds."""
  lines = [
    "| setup | best lr | seeds | final val loss | rare-token val loss | opt. state, tables "
    "| opt. state, model | step time |",
    "|" + "---|" * 8,
  ]
  for setup, s in best.items():
    edge = " (grid edge)" if s["lr_on_grid_edge"] else ""
    lines.append(
      f"| {setup} | {s['best_lr']:g}{edge} | {len(s['seeds'])} "
      f"| {s['final_val_loss']:.4f} ± {s['final_val_loss_std']:.4f} "
      f"| {s['rare_val_loss']:.4f} ± {s['rare_val_loss_std']:.4f} "
      f"| {train_lib.format_bytes(s['table_state_bytes'])} "
      f"| {train_lib.format_bytes(s['model_state_bytes'])} "
      f"| {1e3 * s['mean_step_time_s']:.1f} ms |"
    )
  return "\n".join(lines)


def format_grid(grid: dict, lrs: Sequence[float]) -> str:
  """Markdown table: mean final validation loss of every setup at every learning rate."""
  lines = [
    "| setup | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |",
    "|" + "---|" * (len(lrs) + 1),
  ]
  for setup, by_lr in grid.items():
    best_lr = min(by_lr, key=lambda lr: _loss_key(by_lr[lr]))
    cells = []
    for lr in lrs:
      s = by_lr[lr]
      cell = f"{s['final_val_loss']:.4f} ± {s['final_val_loss_std']:.4f}"
      cells.append(f"**{cell}**" if lr == best_lr else cell)
    lines.append(f"| {setup} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
  parser = train_lib.build_parser()
  parser.prog = "python -m models.bench_quality"
  parser.description = (
    "Learning-rate sweep x seeds for each optimizer setup; each setup is "
    "reported at its own best learning rate as mean ± std."
  )
  parser.add_argument(
    "--lrs",
    nargs="+",
    type=float,
    default=list(DEFAULT_LRS),
    help="peak learning rates to sweep (default: %(default)s)",
  )
  parser.set_defaults(seeds=list(DEFAULT_SEEDS))
  args = parser.parse_args(argv)
  if args.lr is not None or args.table_lr is not None or args.lr_for or args.table_lr_for:
    parser.error("the benchmark sweeps the learning rate itself: use --lrs")
  return run_benchmark(train_lib.config_from_args(args), lrs=args.lrs)


if __name__ == "__main__":
  main()
