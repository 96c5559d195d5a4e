"""Fine-tuning in Tunix's ``PeftTrainer`` against the programs' own train step: one run, two loops.

``python -m models.sft`` trains with the train step that every program here shares
(``models.training.step``). Tunix's ``PeftTrainer`` runs the same loop for any ``nnx.Module``
given a loss (``with_loss_fn``) and a map from a batch to the loss's arguments
(``with_gen_model_input_fn``): our GPT fits it with no adapter, and the optimizer of a setup
(``Comparison.optimizer``) is the same object in both. This benchmark fine-tunes the base model
on the SFT task's batches both ways, for each setup at one learning rate, the two loops' steps
interleaved so that a noisy machine slows them alike, and reports side by side: the seconds per
step (median, the compiling first step left out) and their ratio, how far the trained
parameters and the train losses of the two loops differ, and the held-out response loss each
reaches.

Run::

  python -m models.bench.tunix_sft                          # small preset, ember and adamw tables
  python -m models.bench.tunix_sft --preset tiny --steps 10 --out /tmp/tunix_sft

Needs Tunix, an optional dependency: ``pip install 'ember-optax[tunix]'``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
import dataclasses
import importlib.util
from pathlib import Path
import time

from flax import nnx
import jax
import numpy as np

import ember_optax
from models import cli
from models.cli import ConfigError, option
from models.nets.gpt import table_labels
from models.optim.registry import Setup
from models.reporting import results as results_lib
from models.reporting.tables import markdown_table
from models.training import finetune
from models.training import step as step_lib
from models.training.config import TrainConfig, resolve
from models.training.loop import Comparison

PROG = 'python -m models.bench.tunix_sft'


@dataclasses.dataclass(frozen=True)
class TunixSFTConfig(finetune.FineTuneOptions, TrainConfig):
  """The SFT task's settings (``models.training.finetune``): one rate and one seed per setup."""

  setups: tuple[str, ...] = option(('ember', 'adamw'), 'setups to run in both loops')
  steps: int = option(100, 'fine-tuning steps per run')
  lr: float = option(1e-3, 'peak learning rate of every setup, tables and body alike')
  seed: int = option(0, 'the batch-order seed')
  out: str | None = option(None, 'folder to write tunix_sft.json into (default: not written)')


def tunix_peft_trainer():
  """Tunix's ``peft_trainer`` module, or a ``ConfigError`` that says how to install it."""
  if importlib.util.find_spec('tunix') is None:
    raise ConfigError(
      "Tunix is not installed; install it with pip install 'ember-optax[tunix]' "
      "(or 'google-tunix') and run again"
    )
  from tunix.sft import peft_trainer

  return peft_trainer


def run_both(
  comparison: Comparison,
  setup: Setup,
  seed: int,
  learning_rates: tuple[float, float],
  peft_trainer,
) -> dict:
  """Fine-tunes ``setup`` from the base model in our train step and in Tunix's, step by step.

  Args:
    comparison: the SFT task (``models.training.finetune.build_comparison``).
    setup: the optimizer setup, the same in both loops.
    seed: the batch-order seed.
    learning_rates: peak ``(body, tables)`` rates.
    peft_trainer: Tunix's ``tunix.sft.peft_trainer`` module.

  Returns:
    Both loops' median step times and their ratio, the largest differences of their trained
    parameters and train losses, both held-out response losses, and both loss curves.
  """
  # One optimizer for both loops: a GradientTransformation is pure, each loop keeps its state.
  tx = comparison.optimizer(setup, learning_rates)
  graphdef, params = nnx.split(comparison.init_model(seed), nnx.Param)
  step = jax.jit(step_lib.train_step(graphdef, tx))
  opt_state = tx.init(params)

  trainer = peft_trainer.PeftTrainer(
    comparison.init_model(seed),
    tx,
    peft_trainer.TrainingConfig(
      eval_every_n_steps=comparison.plan.steps + 1,
      max_steps=comparison.plan.steps,
      pbar_description=None,
    ),
  )
  trainer.with_loss_fn(step_lib.next_token_loss)
  trainer.with_gen_model_input_fn(lambda batch: batch)

  ours_losses, ours_times, tunix_times = [], [], []

  def interleaved() -> Iterator[dict]:
    # Before Tunix's next batch: wait for its last step to finish (it dispatches ahead), time
    # it, then take our step on the same batch, so that the two never run at once.
    nonlocal params, opt_state
    handed_over = None
    for inputs, targets in comparison.train_batches(seed):
      jax.block_until_ready(nnx.state(trainer.model, nnx.Param))
      if handed_over is not None:
        tunix_times.append(time.perf_counter() - handed_over)
      start = time.perf_counter()
      params, opt_state, loss = step(params, opt_state, inputs, targets)
      ours_losses.append(float(loss))  # Waits for the step: the timing covers all of it.
      ours_times.append(time.perf_counter() - start)
      handed_over = time.perf_counter()
      yield {'inputs': inputs, 'targets': targets}
    jax.block_until_ready(nnx.state(trainer.model, nnx.Param))
    tunix_times.append(time.perf_counter() - handed_over)

  trainer.train(interleaved())
  tunix_params = nnx.state(trainer.model, nnx.Param)
  tunix_losses = [float(v) for v in trainer.metrics_logger.get_metric_history('', 'loss', 'train')]
  differences = {
    jax.tree_util.keystr(path, simple=True, separator='/').removesuffix('/value'): float(
      np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))
    )
    for (path, a), b in zip(
      jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(tunix_params), strict=True
    )
  }
  widest = max(differences, key=differences.get)
  is_table = [
    label == ember_optax.TABLE_LABEL
    for label in jax.tree.leaves(table_labels(params, comparison.plan.model))
  ]
  table_difference = max(d for d, t in zip(differences.values(), is_table, strict=True) if t)
  scales = [float(np.max(np.abs(np.asarray(a)))) for a in jax.tree.leaves(params)]

  def held_out(run_params) -> float:
    return step_lib.evaluate(graphdef, run_params, comparison.val_batches, comparison.rare_mask)[0]

  # The first step of each loop compiles: the medians are over the others.
  ours_s, tunix_s = float(np.median(ours_times[1:])), float(np.median(tunix_times[1:]))
  return {
    'setup': setup.name,
    'lr': learning_rates[0],
    'table_lr': learning_rates[1],
    'seed': seed,
    'steps': len(ours_losses),
    'tunix_steps': len(tunix_losses),
    'ours_step_s': ours_s,
    'tunix_step_s': tunix_s,
    'tunix_over_ours': tunix_s / ours_s,
    'max_param_difference': differences[widest],
    'max_param_difference_at': widest,
    'max_table_difference': table_difference,
    'max_param_magnitude': max(scales),
    'max_train_loss_difference': float(
      np.max(np.abs(np.subtract(ours_losses, tunix_losses[: len(ours_losses)])))
    ),
    'ours_held_out_loss': held_out(params),
    'tunix_held_out_loss': held_out(tunix_params),
    'ours_train_losses': ours_losses,
    'tunix_train_losses': tunix_losses,
  }


def summary_table(runs: Sequence[dict]) -> str:
  rows = [
    (
      r['setup'],
      f'{r["lr"]:g}',
      str(r['steps']),
      f'{1e3 * r["ours_step_s"]:.1f}',
      f'{1e3 * r["tunix_step_s"]:.1f}',
      f'{r["tunix_over_ours"]:.2f}',
      f'{r["max_param_difference"]:.1e}'
      + (f' ({r["max_param_difference_at"]})' if r['max_param_difference'] else ''),
      f'{r["max_table_difference"]:.1e}',
      f'{r["max_train_loss_difference"]:.1e}',
      f'{r["ours_held_out_loss"]:.4f}',
      f'{r["tunix_held_out_loss"]:.4f}',
    )
    for r in runs
  ]
  return markdown_table(
    (
      'setup',
      'lr',
      'steps',
      'our step ms',
      'PeftTrainer step ms',
      'PeftTrainer / ours',
      'max |param difference| (where)',
      'max |token-table difference|',
      'max |train loss difference|',
      'held-out loss, ours',
      'held-out loss, PeftTrainer',
    ),
    rows,
  )


def run(config: TunixSFTConfig, verbose: bool = True) -> dict:
  """Runs the benchmark; returns (and, with ``config.out``, writes) its results."""
  if config.out is not None and Path(config.out).exists() and not Path(config.out).is_dir():
    raise ConfigError(f'--out {config.out!r} is a file, not a folder')
  # The SFT task's settings; --out is where this benchmark's results go, not the task's.
  task_config = dataclasses.replace(config, out=None).filled()
  plan = resolve(task_config)  # Every setting is checked before Tunix is looked for.
  peft_trainer = tunix_peft_trainer()
  comparison, base_model = finetune.build_comparison(task_config, verbose=verbose)
  runs = []
  for setup in plan.setups:
    rates = plan.learning_rates[setup.name]
    result = run_both(comparison, setup, config.seed, rates, peft_trainer)
    runs.append(result)
    if verbose:
      print(
        f'[tunix_sft] {setup.name}: our step {1e3 * result["ours_step_s"]:.1f} ms, PeftTrainer '
        f'{1e3 * result["tunix_step_s"]:.1f} ms ({result["tunix_over_ours"]:.2f}x); parameters '
        f'differ by at most {result["max_param_difference"]:.1e} '
        f'({result["max_param_difference_at"]}), the token tables by '
        f'{result["max_table_difference"]:.1e}'
      )
  results = {
    'preset': config.preset,
    'base_model': base_model['key'],
    'runs': runs,
    'table': summary_table(runs),
    'environment': results_lib.environment(),
  }
  if verbose:
    print('\n' + results['table'])
  if config.out is not None:
    Path(config.out).mkdir(parents=True, exist_ok=True)
    results_lib.write_json(Path(config.out) / 'tunix_sft.json', results)
  return results


def build_parser() -> cli.Parser:
  return cli.parser_for(
    TunixSFTConfig,
    PROG,
    'Fine-tunes the base model on the SFT task in our train step and in Tunix PeftTrainer, '
    'step by step on the same batches; compares their time per step and their results.',
    skip=(
      'lr_for',
      'table_lr',
      'table_lr_for',
      'seeds',
      'checkpoint_dir',
      'checkpoint_every',
      'eval_every',
      'progress',
    ),
  )


def main(argv: Sequence[str] | None = None) -> dict:
  args = build_parser().parse_args(argv)
  return cli.run_command(PROG, lambda: run(cli.from_args(args, TunixSFTConfig)))


if __name__ == '__main__':
  main()
