"""Supervised fine-tuning's shared machinery: the task built from the pretrained base model.

A fine-tuning program's settings combine :class:`FineTuneOptions` (the base model to start from)
with a :class:`~models.training.config.TrainConfig` (``models.sft`` with the learning-rate search's
``SearchConfig`` too; ``models.bench.tunix_sft`` with one rate). :func:`build_comparison` turns them
into a :class:`~models.training.loop.Comparison` whose runs all start from the base model
(``models.training.pretrained``, read from its cache or trained) and train on the corpus's own
docstring -> body pairs (``models.data.docstring_pairs``), scored on the response tokens of the
held-out pairs; the pretraining domain's validation set is evaluated too (:data:`FORGETTING`)::

  @dataclasses.dataclass(frozen=True)
  class Settings(FineTuneOptions, TrainConfig):  # a program's flags: models.cli.parser_for
    ...

  config = Settings(preset='tiny').filled()  # the preset's fine-tuning defaults filled in
  comparison, base_model = build_comparison(config)  # the task; the base model's losses
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar

from flax import nnx
import numpy as np

from models.cli import ConfigError, option
from models.data import docstring_pairs
from models.reporting.sft import FORGETTING
from models.training import step as step_lib
from models.training.config import TrainConfig, resolve
from models.training.loop import Comparison
from models.training.presets import PRESETS, FineTuningDefaults
from models.training.pretrained import PretrainConfig, load_or_pretrain

# The task's name, recorded with the runs: a new version of the pairs is another task.
TASK = f'docstring-pairs-v{docstring_pairs.CACHE_VERSION}'

_Config = TypeVar('_Config', bound='FineTuneOptions')


@dataclasses.dataclass(frozen=True)
class FineTuneOptions:
  """The base model a fine-tuning program starts from, combined with a program's ``TrainConfig``.

  Its :meth:`filled` gives the preset's fine-tuning defaults (``Preset.sft``) to the settings the
  flags left unset.

  Example:
    >>> @dataclasses.dataclass(frozen=True)
    ... class Settings(FineTuneOptions, TrainConfig):
    ...   pass
    >>> Settings(preset='tiny').filled().steps  # The tiny preset's fine-tuning steps.
    20
    >>> Settings(preset='tiny', steps=5, pretrain_steps=6).filled().steps
    5
  """

  pretrain_seed: int = option(0, "the base model's seed (models.pretrain --seed)")
  pretrain_steps: int | None = option(
    None, "the base model's pretraining steps (default: the preset's)"
  )
  pretrained_dir: str | None = option(
    None, 'cache of pretrained checkpoints (default: $EMBER_OPTAX_CACHE_DIR/pretrained)'
  )

  def filled(self: _Config) -> _Config:
    """The settings with the preset's fine-tuning defaults where none was given.

    Every field of :class:`~models.training.presets.FineTuningDefaults` (steps, lrs, best_seeds,
    extend) that the program's settings have and leave ``None`` takes the preset's value.
    """
    preset = getattr(self, 'preset', None)
    defaults = PRESETS[preset].sft if preset in PRESETS else FineTuningDefaults()
    unset = {
      field.name: getattr(defaults, field.name)
      for field in dataclasses.fields(defaults)
      if hasattr(self, field.name) and getattr(self, field.name) is None
    }
    return dataclasses.replace(self, **unset)


def padded_batches(
  pairs: docstring_pairs.PairSet, batch_size: int
) -> list[tuple[np.ndarray, np.ndarray]]:
  """Every pair once, in batches of ``batch_size`` rows; the last one padded with unscored rows.

  Args:
    pairs: the pairs, in order.
    batch_size: rows per batch.

  Returns:
    ``(inputs, targets)`` batches; padding rows are token 0 with targets -1 (never scored).
  """
  inputs, targets = pairs.inputs, pairs.targets
  batches = []
  for start in range(0, len(pairs), batch_size):
    x, y = inputs[start : start + batch_size], targets[start : start + batch_size]
    missing = batch_size - x.shape[0]
    if missing:
      x = np.concatenate([x, np.zeros((missing, x.shape[1]), x.dtype)])
      y = np.concatenate([y, np.full((missing, y.shape[1]), -1, y.dtype)])
    batches.append((x, y))
  return batches


def build_comparison(config: TrainConfig, verbose: bool = True) -> tuple[Comparison, dict]:
  """The fine-tuning comparison (base model, pairs, evaluations) and the base model's record.

  Args:
    config: a program's settings: a ``TrainConfig`` combined with :class:`FineTuneOptions`
      (its ``pretrain_*`` fields name the base model), filled (:meth:`FineTuneOptions.filled`).
    verbose: print what is read or trained.

  Returns:
    The comparison, whose runs start from the base model, train on the training pairs, evaluate
    the held-out pairs' responses and the pretraining domain (``extra_evals[FORGETTING]``); and
    the base model's record: its checkpoint, its losses on both, and the pairs' counts.

  Raises:
    ConfigError: if the settings give a model of another shape than the base model's.
  """
  plan = resolve(config)
  base = Comparison.build(plan, verbose=verbose)
  train_pairs, held_out = docstring_pairs.load_pairs(base.corpus, plan.seq_len)
  if plan.batch_size > len(train_pairs):
    raise ConfigError(
      f'--batch-size {plan.batch_size} is more than the {len(train_pairs)} training pairs of '
      f'--seq-len {plan.seq_len}; use a smaller batch or a larger corpus'
    )
  pretrain_config = PretrainConfig(
    preset=config.preset,
    seed=config.pretrain_seed,
    steps=config.pretrain_steps,
    text=config.text,
    cache_dir=config.cache_dir,
    pretrained_dir=config.pretrained_dir,
  )
  # Checked before the base model is read or trained.
  base_shape = resolve(pretrain_config.train_config()).model
  if base_shape != plan.model:
    given, theirs = dataclasses.asdict(plan.model), dataclasses.asdict(base_shape)
    differing = sorted(k for k in given if given[k] != theirs[k])
    raise ConfigError(
      f'the fine-tuned model differs from the base model in {differing} (from --seq-len, '
      f'--vocab-size or --tie-embeddings); keep the preset {config.preset!r} values'
    )
  pretrained = load_or_pretrain(pretrain_config, corpus=base.corpus, verbose=verbose)
  comparison = dataclasses.replace(
    base,
    val_batches=padded_batches(held_out, plan.batch_size),
    start_params=pretrained.params,
    train_source=lambda seed, start: docstring_pairs.pair_batches(
      train_pairs, batch_size=plan.batch_size, steps=plan.steps, seed=seed, start=start
    ),
    extra_evals={FORGETTING: base.val_batches},
  )
  graphdef = nnx.graphdef(comparison.init_model(0))
  response_loss, rare_loss = step_lib.evaluate(
    graphdef, pretrained.params, comparison.val_batches, comparison.rare_mask
  )
  record = {
    'path': str(pretrained.path),
    'key': pretrained.path.name,
    'pretrain_val_loss': step_lib.evaluate(
      graphdef, pretrained.params, base.val_batches, base.rare_mask
    )[0],
    'held_out_response_loss': response_loss,
    'rare_response_loss': rare_loss,
    'pairs': {
      'train': len(train_pairs),
      'held_out': len(held_out),
      'dropped_too_long': train_pairs.dropped + held_out.dropped,
      'response_tokens_held_out': int(held_out.loss_mask.sum()),
    },
  }
  return comparison, record
