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

Within a seed the setups differ only by their optimizer, so the benchmark also reports Ember's
loss minus each other setup's seed by seed (each at its own best learning rate), as mean ± std:
a much less noisy comparison than the difference of the means.

Writes ``bench.json`` (every run, the grid, the selection) and ``bench.md`` (the tables) to
``--out``. Accepts the main job's flags (preset, steps, text, ...), except the learning-rate ones.
``--summarize BENCH_JSON...`` trains nothing and recomputes the tables from saved runs, merging
several files (a sweep and its extension to more learning rates, say).
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
    The dict of :func:`summarize_benchmark`, plus ``"data"`` and ``"total_time_s"``.
  """
  cfg = config.resolved()
  corpus = train_lib.load_corpus(cfg)
  started = time.perf_counter()
  runs = []
  for lr in sorted(float(lr) for lr in lrs):
    if cfg.verbose:
      print(f"\n[bench] learning rate {lr:g}", flush=True)
    sub = dataclasses.replace(cfg, lr=lr, table_lr=None, setup_lr={}, setup_table_lr={}, out=None)
    runs.extend(train_lib.run(sub, corpus=corpus)["runs"])
  results = summarize_benchmark(dataclasses.asdict(cfg), runs)
  results["data"] = {k: v for k, v in corpus.info.items() if k != "val_file_list"}
  results["total_time_s"] = time.perf_counter() - started
  report(results, Path(cfg.out) if cfg.out else None, verbose=cfg.verbose)
  return results


def summarize_benchmark(config: dict, runs: list[dict]) -> dict:
  """Selects each setup's best learning rate and compares the setups, from the runs alone.

  Args:
    config: the benchmark's configuration (``dataclasses.asdict`` of a ``TrainConfig``).
    runs: the main job's run entries (``setup``, ``seed``, ``lr``, losses, ...) of every setup,
      seed and learning rate.

  Returns:
    ``{"config", "lrs", "grid", "best", "paired", "runs", "table", "grid_table",
    "paired_table"}``: ``grid[setup][lr]`` is the per-setup summary at that learning rate
    (``models.train.summarize``), ``best[setup]`` the summary at the setup's best learning rate
    plus ``"best_lr"`` and ``"lr_on_grid_edge"``, and ``paired`` the per-seed differences of
    :func:`paired_differences`.
  """
  setups = list(dict.fromkeys(r["setup"] for r in runs))
  lrs = sorted({r["lr"] for r in runs})
  grid = {setup: {} for setup in setups}
  for lr in lrs:
    for setup, summary in train_lib.summarize([r for r in runs if r["lr"] == lr], setups).items():
      grid[setup][lr] = summary
  best = {}
  for setup, by_lr in grid.items():
    best_lr = min(by_lr, key=lambda lr: _loss_key(by_lr[lr]))
    best[setup] = {
      **by_lr[best_lr],
      "best_lr": best_lr,
      "lr_on_grid_edge": len(lrs) > 1 and best_lr in (lrs[0], lrs[-1]),
    }
  paired = paired_differences(best, runs)
  return {
    "config": config,
    "lrs": lrs,
    "grid": {s: {str(lr): v for lr, v in g.items()} for s, g in grid.items()},
    "best": best,
    "paired": paired,
    "runs": runs,
    "table": format_best(best),
    "grid_table": format_grid(grid, lrs),
    "paired_table": format_paired(paired),
  }


def paired_differences(best: dict, runs: list[dict], reference: str = "ember") -> dict:
  """``reference`` minus every other setup, seed by seed, each at its own best learning rate.

  Within a seed every setup starts from the same initialization and sees the same batches, so
  the difference cancels what the seed does to all setups alike and is much less noisy than
  the difference of the means.

  Returns:
    ``{setup: {"seeds", "final_val_loss", "final_val_loss_std", "rare_val_loss",
    "rare_val_loss_std"}}``: mean and (population) std over the seeds both setups ran; negative
    means ``reference`` has the lower loss. Empty without ``reference``.
  """
  if reference not in best:
    return {}

  def at_best(setup):
    return {r["seed"]: r for r in runs
            if r["setup"] == setup and r["lr"] == best[setup]["best_lr"]}

  ours = at_best(reference)
  paired = {}
  for setup in best:
    if setup == reference:
      continue
    theirs = at_best(setup)
    seeds = sorted(set(ours) & set(theirs))
    entry = {"seeds": seeds}
    for key in ("final_val_loss", "rare_val_loss"):
      diffs = np.array([ours[seed][key] - theirs[seed][key] for seed in seeds])
      entry[key], entry[key + "_std"] = float(diffs.mean()), float(diffs.std())
    paired[setup] = entry
  return paired


def report(results: dict, out_dir: Path | None, verbose: bool = True) -> None:
  """Prints the tables and writes ``bench.json``, ``bench.md`` and ``loss_curves.png``."""
  tables = "\n\n".join(
    results[key] for key in ("grid_table", "table", "paired_table") if results[key]
  )
  if verbose:
    print("\n" + tables)
    if "total_time_s" in results:
      print(f"\n[bench] {len(results['runs'])} runs in {results['total_time_s']:.0f}s")
  if out_dir is None:
    return
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / "bench.json").write_text(json.dumps(results, indent=1))
  (out_dir / "bench.md").write_text(tables + "\n")
  best = results["best"]
  train_lib.plot_curves(
    [r for r in results["runs"] if r["lr"] == best[r["setup"]]["best_lr"]],
    out_dir / "loss_curves.png",
    title=f"GPT {results['config']['preset']}, each setup at its best learning rate",
  )
  if verbose:
    print(f"[bench] wrote {out_dir / 'bench.json'}, bench.md and loss_curves.png")


def _loss_key(summary: dict) -> float:
  """Mean final validation loss, with a diverged grid point (NaN) ranked last."""
  loss = summary["final_val_loss"]
  return float("inf") if np.isnan(loss) else loss


def format_best(best: dict) -> str:
  """Markdown table: each setup at its own best learning rate, mean ± std over seeds."""
  header = ("setup", "best lr", "seeds", "final val loss", "rare-token val loss",
            "opt. state, tables", "opt. state, model", "step time")
  return train_lib.markdown_table(header, (
    (setup, f"{s['best_lr']:g}" + (" (grid edge)" if s["lr_on_grid_edge"] else ""),
     str(len(s["seeds"])), train_lib.format_mean_std(s, "final_val_loss"),
     train_lib.format_mean_std(s, "rare_val_loss"),
     train_lib.format_bytes(s["table_state_bytes"]),
     train_lib.format_bytes(s["model_state_bytes"]), f"{1e3 * s['mean_step_time_s']:.1f} ms")
    for setup, s in best.items()
  ))


def format_grid(grid: dict, lrs: Sequence[float]) -> str:
  """Markdown table: mean final validation loss of every setup at every learning rate."""
  rows = []
  for setup, by_lr in grid.items():
    best_lr = min(by_lr, key=lambda lr: _loss_key(by_lr[lr]))
    cells = []
    for lr in lrs:
      cell = train_lib.format_mean_std(by_lr[lr], "final_val_loss")
      cells.append(f"**{cell}**" if lr == best_lr else cell)
    rows.append([setup, *cells])
  return train_lib.markdown_table(["setup"] + [f"lr {lr:g}" for lr in lrs], rows)


def format_paired(paired: dict, reference: str = "ember") -> str:
  """Markdown table of :func:`paired_differences`; empty if there is nothing to compare."""
  if not paired:
    return ""
  header = (f"{reference} minus", "seeds", "final val loss", "rare-token val loss")
  return train_lib.markdown_table(header, (
    (setup, str(len(d["seeds"])), train_lib.format_mean_std(d, "final_val_loss", signed=True),
     train_lib.format_mean_std(d, "rare_val_loss", signed=True))
    for setup, d in paired.items()
  ))


def _training_settings(config: dict) -> dict:
  """The settings that two sweeps must share for their runs to be compared."""
  # What was swept, which runs were made, and where things were written may differ.
  varying = {"lr", "table_lr", "setup_lr", "setup_table_lr", "seeds", "setups", "cache_dir",
             "out", "progress", "verbose"}
  return {k: v for k, v in config.items() if k not in varying}


def summarize_saved(paths: Sequence[Path], out_dir: str | Path | None = None) -> dict:
  """The benchmark's results from the runs of saved ``bench.json`` files, merged."""
  saved = [json.loads(Path(path).read_text()) for path in paths]
  keys = {(r["setup"], r["seed"], r["lr"]) for result in saved for r in result["runs"]}
  runs = [r for result in saved for r in result["runs"]]
  if len(keys) != len(runs):
    raise ValueError(f"{[str(p) for p in paths]}: a (setup, seed, learning rate) run repeats")
  config = _training_settings(saved[0]["config"])
  for path, result in zip(paths[1:], saved[1:], strict=True):
    other = _training_settings(result["config"])
    if other != config:
      differing = sorted(k for k in config.keys() | other.keys() if config.get(k) != other.get(k))
      raise ValueError(f"{path}: its runs differ from {paths[0]}'s in {differing}; not merged")
  results = {**saved[0], **summarize_benchmark(saved[0]["config"], runs)}
  results["total_time_s"] = sum(result.get("total_time_s", 0.0) for result in saved)
  report(results, Path(out_dir) if out_dir else None)
  return results


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
  parser.add_argument(
    "--summarize",
    type=Path,
    nargs="+",
    metavar="BENCH_JSON",
    help="train nothing: recompute the tables from the runs of saved bench.json files (several "
    "files, such as a sweep and its extension to more learning rates, are merged)",
  )
  parser.set_defaults(seeds=list(DEFAULT_SEEDS))
  args = parser.parse_args(argv)
  if args.summarize:
    return summarize_saved(args.summarize, args.out)
  if args.lr is not None or args.table_lr is not None or args.lr_for or args.table_lr_for:
    parser.error("the benchmark sweeps the learning rate itself: use --lrs")
  return run_benchmark(train_lib.config_from_args(args), lrs=args.lrs)


if __name__ == "__main__":
  main()
