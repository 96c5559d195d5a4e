"""The main job: train one GPT under several optimizer setups and compare them.

    python -m models.train                      # small preset, stdlib code, all three setups
    python -m models.train --preset tiny --steps 100 --out /tmp/run
    python -m models.train --text ~/my_corpus --setups adamw ember --seeds 0 1 2

The setups (``models.optimizers``) differ only on the token tables, the input embedding and the
LM head; the body always gets AdamW. Within a seed every setup starts from the same
initialization and sees the same batches in the same order, so the differences come from the
optimizer only. Every setup clips the gradient to the same global norm, and the LM head's bias
starts at the training set's log unigram frequencies (``--clip-norm``, ``--no-unigram-bias``).

Each run reports its final validation loss, its validation loss on rare-token targets (targets
whose id is in the less frequent half of the vocabulary by training count), and the
optimizer-state bytes of the token tables and of the whole model. The command writes
``results.json`` and ``loss_curves.png`` to ``--out`` (default ``out/train/<date-time>``).

Optimizer-state bytes: *whole model* is the sum of ``nbytes`` over the array leaves of the setup's
optimizer state after ``init``. *Token tables* is the same sum for the setup's token-table
transform (``optax.adamw``, ``ember_optax.ember`` or ``optax.adafactor``, with the run's settings)
initialized on the token-table leaves alone (``jax.eval_shape``, nothing is allocated).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import datetime
import json
from pathlib import Path
import time

import jax

from models import checkpoints as checkpoints_lib
from models import cli, reporting
from models import data as data_lib
from models.config import Plan, TrainConfig, resolve
from models.gpt import count_params
from models.training import Validation, init_model, train_one

PROG = 'python -m models.train'


def load_corpus(plan: Plan, verbose: bool = True) -> data_lib.Corpus:
  """The tokenized corpus of ``plan``, checked to hold at least one sequence on each side."""
  config = plan.config
  corpus = data_lib.load_corpus(
    config.text,
    vocab_size=plan.vocab_size,
    val_fraction=config.val_fraction,
    tokenizer_train_chars=config.tokenizer_train_chars,
    cache_dir=config.cache_dir,
    verbose=verbose,
  )
  data_lib.check_fits(corpus, plan.seq_len)
  return corpus


def run(
  config: TrainConfig,
  corpus: data_lib.Corpus | None = None,
  verbose: bool = True,
) -> dict:
  """Runs the comparison and returns its results (also written to ``config.out`` if set).

  Returns:
    ``{"config", "plan", "model", "data", "environment", "runs", "summary", "paired", "table",
    "paired_table", "total_time_s"}``: one ``runs`` entry per (setup, seed) (see
    ``models.training.train_one``), per setup in ``summary`` its losses over the seeds
    (``reporting.summarize``), and in ``paired`` Ember minus each other setup, seed by seed.

  Raises:
    ConfigError, CorpusError: for settings or a corpus that cannot be run, before training.
  """
  plan = resolve(config)
  config = plan.config
  log: Callable[..., None] = print if verbose else (lambda *a, **k: None)
  if corpus is None:
    corpus = load_corpus(plan, verbose)
  else:
    data_lib.check_fits(corpus, plan.seq_len)
  folder = None
  if config.checkpoint_dir:
    folder = checkpoints_lib.open_folder(
      config.checkpoint_dir,
      {
        **plan.training_settings(),
        'learning_rates': plan.learning_rates,
        'corpus': corpus.info['corpus'],
        'corpus_cache': str(corpus.cache_dir),
      },
    )
  validation = Validation.build(plan, corpus)
  n_params = count_params(init_model(plan, 0, corpus))
  model = plan.model
  log(
    f'[train] preset {config.preset}: {n_params:,} parameters (d_model {model.d_model}, '
    f'{model.n_layers} layers, vocab {model.vocab_size}, '
    f'{"tied" if model.tie_embeddings else "untied"} head); {plan.steps} steps of '
    f'{plan.batch_size}x{plan.seq_len} tokens; corpus {corpus.info["corpus"]} '
    f'({corpus.info["train_tokens"]:,} train / {corpus.info["val_tokens"]:,} val tokens); '
    f'{jax.devices()[0].platform}'
  )
  started = time.perf_counter()
  runs = []
  for seed in config.seeds:
    for setup in config.setups:
      checkpoints = None
      if folder is not None:
        checkpoints = checkpoints_lib.RunCheckpoints(
          folder, f'{setup}-seed{seed}', config.checkpoint_every
        )
      runs.append(train_one(plan, setup, seed, corpus, validation, checkpoints))
  summary = reporting.summarize(runs)
  paired = reporting.paired_differences(
    {setup: [r for r in runs if r['setup'] == setup] for setup in summary}
  )
  results = {
    'config': dataclasses.asdict(config),
    'plan': {**plan.training_settings(), 'learning_rates': plan.learning_rates},
    'model': {**dataclasses.asdict(model), 'params': n_params},
    'data': {k: v for k, v in corpus.info.items() if k != 'val_file_list'},
    'environment': reporting.environment(corpus.cache_dir),
    'runs': runs,
    'summary': summary,
    'paired': paired,
    'table': reporting.format_summary(summary),
    'paired_table': reporting.format_paired(paired),
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
    f"{step_ms} (under this machine's current load; python -m models.bench_step measures "
    'speed)'
  )
  if config.out:
    write(
      results,
      Path(config.out),
      title=(
        f'GPT {config.preset}, {corpus.info["corpus"]}, {plan.steps} steps, '
        f'seeds {" ".join(map(str, config.seeds))}'
      ),
    )
    log(f'[train] wrote {Path(config.out) / "results.json"} and loss_curves.png')
  return results


def write(results: dict, out: Path, title: str) -> None:
  """Writes ``results.json`` and ``loss_curves.png`` to ``out``."""
  out.mkdir(parents=True, exist_ok=True)
  (out / 'results.json').write_text(json.dumps(results, indent=1))
  reporting.plot_curves(results['runs'], out / 'loss_curves.png', title=title)


def default_out() -> str:
  """``out/train/<date-time>`` under the current folder: a new folder for every run."""
  return str(Path('out', 'train', datetime.datetime.now().strftime('%Y%m%d-%H%M%S')))


def build_parser() -> cli.Parser:
  parser = cli.Parser(
    prog=PROG,
    description='Train a GPT under each optimizer setup (adamw, ember, adafactor) from the '
    'same initialization and batches, and compare them.',
  )
  cli.add_config_arguments(parser)
  return parser


def main(argv: Sequence[str] | None = None) -> dict:
  args = build_parser().parse_args(argv)

  def main_job():
    config = cli.config_from_args(args)
    if config.out is None:
      config = dataclasses.replace(config, out=default_out())
    return run(config)

  return cli.run_command(PROG, main_job)


if __name__ == '__main__':
  main()
