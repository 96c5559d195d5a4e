"""The main job: train one GPT under several optimizer setups and compare them.

    python -m models.train                      # small preset, stdlib code, all three setups
    python -m models.train --preset tiny --steps 100 --out /tmp/run
    python -m models.train --text ~/my_corpus --setups adamw ember --seeds 0 1 2

The setups (``models.optim.registry``) differ only on the token tables, the input embedding and
the LM head; the body gets AdamW unless a setup names another (``ember+muon``). Within a seed
every setup starts from the same initialization and sees the same batches in the same order, so
the differences come from the optimizer only. Every setup clips the gradient to the same global
norm, and the LM head's bias starts at the training set's log unigram frequencies
(``--clip-norm``, ``--no-unigram-bias``).

Each run reports its final validation loss, its validation loss on rare-token targets (targets
whose id is in the less frequent half of the vocabulary by training count), and the
optimizer-state bytes of the token tables and of the whole model. The command writes
``results.json`` and ``loss_curves.png`` to ``--out`` (default ``out/train/<date-time>``).

Optimizer-state bytes, read from the run's own optimizer state after ``init``: *whole model* is
the sum of ``nbytes`` over its array leaves; *token tables* is the part the tables keep, the
partition's ``"token_table"`` branch, or AdamW's moments of the table leaves
(``ember_optax.diagnostics.state_bytes_by_group``).
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import datetime
from pathlib import Path
import time

import jax

from models import cli
from models.reporting import plots, stats, tables
from models.reporting import results as results_lib
from models.training import checkpoints as checkpoints_lib
from models.training.config import TrainConfig, resolve
from models.training.loop import Comparison, train_one

PROG = 'python -m models.train'


def run(config: TrainConfig, corpus=None, verbose: bool = True) -> dict:
  """Runs the comparison and returns its results (also written to ``config.out`` if set).

  Returns:
    ``{"config", "plan", "model", "data", "environment", "runs", "summary", "paired", "table",
    "paired_table", "total_time_s"}``: one ``runs`` entry per (setup, seed) (see
    ``models.training.loop.train_one``), per setup in ``summary`` its losses over the seeds
    (``reporting.stats.summarize``), and in ``paired`` Ember minus each other setup, seed by seed.

  Raises:
    ConfigError, CorpusError: for settings or a corpus that cannot be run, before training.
  """
  plan = resolve(config)
  log = print if verbose else (lambda *a, **k: None)
  comparison = Comparison.build(plan, corpus, verbose)
  corpus = comparison.corpus
  folder = None
  if plan.checkpoint_dir:
    folder = checkpoints_lib.open_folder(
      plan.checkpoint_dir,
      {
        **plan.training_settings(),
        'learning_rates': plan.learning_rates,
        'corpus': corpus.info['corpus'],
        'corpus_cache': str(corpus.cache_dir),
      },
    )
  model = plan.model
  log(
    f'[train] preset {config.preset}: {comparison.n_params:,} parameters (d_model '
    f'{model.d_model}, {model.n_layers} layers, vocab {model.vocab_size}, '
    f'{"tied" if model.tie_embeddings else "untied"} head); {plan.steps} steps of '
    f'{plan.batch_size}x{plan.seq_len} tokens; corpus {corpus.info["corpus"]} '
    f'({corpus.info["train_tokens"]:,} train / {corpus.info["val_tokens"]:,} val tokens); '
    f'{jax.devices()[0].platform}'
  )
  started = time.perf_counter()
  runs = []
  for seed in plan.seeds:
    for setup in plan.setups:
      checkpoints = None
      if folder is not None:
        checkpoints = checkpoints_lib.RunCheckpoints(
          folder, f'{setup.name}-seed{seed}', plan.checkpoint_every
        )
      runs.append(train_one(comparison, setup, seed, checkpoints=checkpoints, log=log))
  summary = stats.summarize(runs)
  paired = stats.paired_differences(
    {setup: [r for r in runs if r['setup'] == setup] for setup in summary}
  )
  results = {
    'config': dataclasses.asdict(plan.config),
    'plan': {**plan.training_settings(), 'learning_rates': plan.learning_rates},
    'model': {**dataclasses.asdict(model), 'params': comparison.n_params},
    'data': {k: v for k, v in corpus.info.items() if k != 'val_file_list'},
    'environment': results_lib.environment(corpus.cache_dir),
    'runs': runs,
    'summary': summary,
    'paired': paired,
    'table': tables.format_summary(summary),
    'paired_table': tables.format_paired(paired),
    'total_time_s': time.perf_counter() - started,
  }
  log('\n' + results['table'])
  if paired:
    log('\n' + results['paired_table'])
  step_ms = ', '.join(
    f'{setup} {1e3 * s["mean_step_time_s"]:.0f} ms' for setup, s in summary.items()
  )
  log(
    f'\n[train] {len(runs)} runs in {results["total_time_s"]:.0f} s; mean step time '
    f"{step_ms} (under this machine's current load; python -m models.bench.step measures "
    'speed)'
  )
  if plan.out:
    write(
      results,
      Path(plan.out),
      title=(
        f'GPT {config.preset}, {corpus.info["corpus"]}, {plan.steps} steps, '
        f'seeds {" ".join(map(str, plan.seeds))}'
      ),
    )
    log(f'[train] wrote {Path(plan.out) / "results.json"} and loss_curves.png')
  return results


def write(results: dict, out: Path, title: str) -> None:
  """Writes ``results.json`` (strict JSON) and ``loss_curves.png`` to ``out``."""
  out.mkdir(parents=True, exist_ok=True)
  results_lib.write_json(out / 'results.json', results)
  plots.plot_curves(results['runs'], out / 'loss_curves.png', title=title)


def default_out() -> str:
  """``out/train/<date-time>`` under the current folder: a new folder for every run."""
  return str(Path('out', 'train', datetime.datetime.now().strftime('%Y%m%d-%H%M%S')))


def build_parser() -> cli.Parser:
  return cli.parser_for(
    TrainConfig,
    PROG,
    'Train a GPT under each optimizer setup (by default adamw, ember, adafactor) '
    'from the same initialization and batches, and compare them.',
  )


def main(argv: Sequence[str] | None = None) -> dict:
  args = build_parser().parse_args(argv)

  def main_job():
    config = cli.from_args(args, TrainConfig)
    if config.out is None:
      config = dataclasses.replace(config, out=default_out())
    return run(config)

  return cli.run_command(PROG, main_job)


if __name__ == '__main__':
  main()
