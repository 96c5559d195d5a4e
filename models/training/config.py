"""What a training run depends on: the settings a user gives (``TrainConfig``) and their
resolution against a preset into everything the run needs (``Plan``).

``TrainConfig`` is the single list of settings: the command line (``models.cli``) is derived from
its fields, their defaults and their help texts, and ``resolve`` fills every ``None`` from the
preset once, checks every value, and returns a ``Plan``: everything the run reads, resolved.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import math
from typing import Any

import optax

from models.cli import ConfigError, flag, option
from models.data import corpus as data_lib
from models.nets.gpt import GPTConfig
from models.optim.registry import (
  BODIES,
  TABLE_OPTIMIZERS,
  Hyperparameters,
  Setup,
  default_setups,
)
from models.optim.setups import TABLE_OPTIONS
from models.training.presets import PRESETS, Preset

# The main job's comparison: the body always gets AdamW; the setups differ on the token tables.
DEFAULT_SETUPS = default_setups('train')


# The corpus's two flags, shared by every program that loads it.
_CORPUS_OPTIONS = {
  'text': "a text file or folder to train on (default: the Python standard library's code)",
  'cache_dir': 'cache for the tokenizer and token arrays (default: $EMBER_OPTAX_CACHE_DIR/corpus, '
  'else ~/.cache/ember_optax/corpus)',
}


def corpus_option(name: str) -> Any:
  """The config field of corpus setting ``name`` (``"text"`` or ``"cache_dir"``), default None."""
  return option(None, _CORPUS_OPTIONS[name])


# Settings of TrainConfig added after committed runs were saved; None is what those runs used.
ADDED_LATER = ('table_b2',)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Every setting of a training comparison. ``None`` takes the preset's value.

  Learning rates: ``lr`` is the peak learning rate of every parameter group of every setup, and
  ``table_lr`` that of the token tables; ``lr_for`` / ``table_lr_for`` set them per setup
  (``{"ember": 3e-3}``). Precedence, for the body: ``lr_for``, ``lr``, the preset's tuned rate;
  for the tables: ``table_lr_for``, ``table_lr``, the body's. Every group follows the same
  schedule shape: linear warm-up, then cosine decay to a tenth of the peak.
  """

  preset: str = option(
    'small',
    'model size with its training settings: tiny (seconds, for tests), small (minutes on '
    'a CPU), medium and large (for a GPU/TPU)',
    choices=tuple(PRESETS),
  )
  setups: tuple[str, ...] = option(
    DEFAULT_SETUPS,
    f'optimizer setups to compare, each TABLES or TABLES+BODY: table optimizer '
    f'{"/".join(TABLE_OPTIMIZERS)}, body {"/".join(BODIES)} (adamw if not named); the tables '
    f'take options after commas, e.g. ember,head=adamw,b2=0.99+muon (options: '
    f'{", ".join(TABLE_OPTIONS)}; see models.optim.setups.Setup)',
  )
  seeds: tuple[int, ...] = option(
    (0,), 'seeds; each one sets the initialization and the batch order'
  )
  steps: int | None = option(None, "optimizer steps per run (default: the preset's)")
  batch_size: int | None = option(None, "sequences per step (default: the preset's)")
  seq_len: int | None = option(None, "tokens per sequence (default: the preset's)")
  lr: float | None = option(
    None,
    "peak learning rate of every group of every setup (default: the preset's tuned rate)",
  )
  table_lr: float | None = option(
    None, "peak learning rate of the token tables of every setup (default: the body's)"
  )
  lr_for: dict[str, float] = option(
    {}, 'peak learning rate per setup, e.g. --lr-for adamw=1e-3 ember=3e-3', metavar='SETUP=LR'
  )
  table_lr_for: dict[str, float] = option(
    {}, 'peak learning rate of the token tables per setup', metavar='SETUP=LR'
  )
  b1: float = option(0.9, "AdamW's first-moment decay")
  b2: float = option(0.999, 'second-moment decay of AdamW and Ember')
  table_b2: float | None = option(
    None, "second-moment decay of the token tables' optimizer, its b2 (default: --b2)"
  )
  eps: float = option(1e-8, 'epsilon of AdamW and Ember')
  weight_decay: float = option(0.0, 'decoupled weight decay of every setup and group')
  clip_norm: float = option(
    1.0,
    "clip every setup's gradient to this global norm before its optimizer; 0 turns clipping off",
  )
  unigram_bias: bool = option(
    True,
    "initialize the LM head's bias to the training set's log unigram frequencies "
    '(--no-unigram-bias: zeros)',
  )
  warmup_steps: int | None = option(
    None, "linear warm-up steps (default: the preset's; at most steps - 1)"
  )
  eval_every: int | None = option(
    None, "steps between validation points of the loss curve (default: the preset's)"
  )
  eval_batches: int | None = option(
    None,
    'validation batches of the final evaluation; curve points use an evenly spread '
    "eighth of them (default: the preset's)",
  )
  vocab_size: int | None = option(None, "BPE vocabulary size (default: the preset's)")
  tie_embeddings: bool = option(False, 'use the token embedding as the LM head')
  text: str | None = corpus_option('text')
  val_fraction: float = option(
    data_lib.DEFAULT_VAL_FRACTION, "share of the corpus's files held out for validation"
  )
  tokenizer_train_chars: int = option(
    data_lib.DEFAULT_TOKENIZER_TRAIN_CHARS, 'characters of training text the BPE learns from'
  )
  cache_dir: str | None = corpus_option('cache_dir')
  out: str | None = option(
    None, 'folder for results.json and loss_curves.png (default: out/train/<date-time>)'
  )
  checkpoint_dir: str | None = option(
    None,
    'save every run here with Orbax every --checkpoint-every steps; the same command '
    'resumes where it stopped',
  )
  checkpoint_every: int = option(100, 'steps between checkpoints (with --checkpoint-dir)')
  progress: bool = option(True, 'progress bars (--no-progress: none)')


@dataclasses.dataclass(frozen=True)
class Plan:
  """A ``TrainConfig`` resolved against its preset and checked: everything a run reads.

  Attributes:
    config: the settings as given (recorded with the results; the run reads the fields below).
    model: the model's shape.
    setups: the optimizer setups, in order.
    seeds: the seeds.
    steps, batch_size, seq_len, warmup_steps, eval_every, eval_batches, vocab_size: resolved.
    learning_rates: per setup name, the peak learning rates ``(body, tables)``.
    hyper: the settings every setup shares (decays, epsilon, weight decay, clipping).
    unigram_bias: whether the head's bias starts at the log unigram frequencies.
    text, val_fraction, tokenizer_train_chars, cache_dir: the corpus's settings.
    out, checkpoint_dir, checkpoint_every, progress: where results and checkpoints go.
  """

  config: TrainConfig
  model: GPTConfig
  setups: tuple[Setup, ...]
  seeds: tuple[int, ...]
  steps: int
  batch_size: int
  seq_len: int
  warmup_steps: int
  eval_every: int
  eval_batches: int
  vocab_size: int
  learning_rates: Mapping[str, tuple[float, float]]
  hyper: Hyperparameters
  unigram_bias: bool
  text: str | None
  val_fraction: float
  tokenizer_train_chars: int
  cache_dir: str | None
  out: str | None
  checkpoint_dir: str | None
  checkpoint_every: int
  progress: bool

  def schedule(self, peak: float) -> optax.Schedule:
    """Linear warm-up to ``peak``, then cosine decay to ``peak / 10`` at the last step."""
    return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=peak,
      warmup_steps=self.warmup_steps,
      decay_steps=max(self.steps, self.warmup_steps + 1),
      end_value=peak / 10,
    )

  def training_settings(self) -> dict:
    """Everything that determines a run's numbers (for checkpoints and merged sweeps)."""
    varying = {
      'setups',
      'seeds',
      'lr',
      'table_lr',
      'lr_for',
      'table_lr_for',
      'out',
      'cache_dir',
      'checkpoint_dir',
      'checkpoint_every',
      'progress',
    }
    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    settings = {
      k: v for k, v in dataclasses.asdict(self.config).items() if k in fields and k not in varying
    }
    # Settings added after runs were saved, left out at their default (which is what those runs
    # computed), so that saved runs still match.
    for name in ADDED_LATER:
      if settings.get(name) is None:
        settings.pop(name, None)
    resolved = (
      'steps',
      'batch_size',
      'seq_len',
      'warmup_steps',
      'eval_every',
      'eval_batches',
      'vocab_size',
    )
    # The model's shape too: a preset's name does not pin it when the preset is passed in.
    model = dataclasses.asdict(self.model)
    return {**settings, **{k: getattr(self, k) for k in resolved}, 'model': model}


def _fail(name: str, value: Any, requirement: str) -> ConfigError:
  return ConfigError(f'{flag(name)} {requirement}, got {value!r}')


def _check_positive_int(name: str, value: Any, minimum: int = 1) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise _fail(name, value, f'must be an integer >= {minimum}')


def _check_number(
  name: str,
  value: Any,
  *,
  low: float,
  high: float = math.inf,
  low_open: bool = False,
  high_open: bool = False,
) -> None:
  ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
  if ok:
    ok = (value > low if low_open else value >= low) and (
      value < high if high_open else value <= high
    )
  if not ok:
    lower = f'{"(" if low_open else "["}{low:g}'
    upper = f'{high:g}{")" if high_open else "]"}' if math.isfinite(high) else 'inf)'
    raise _fail(name, value, f'must be a finite number in {lower}, {upper}')


def _parse_setup(name: str, text: Any) -> Setup:
  try:
    return Setup.parse(str(text))
  except ValueError as error:
    raise ConfigError(f'{flag(name)}: setup {text!r}: {error}') from None


def _check_setups(name: str, names: Any, allowed: tuple[str, ...]) -> None:
  for text in names:
    _parse_setup(name, text)
  missing = [s for s in names if s not in allowed]
  if missing:
    raise ConfigError(
      f'{flag(name)} names {missing[0]!r}, which is not among --setups {" ".join(allowed)}'
    )


def resolve(config: TrainConfig, preset: Preset | None = None) -> Plan:
  """Fills ``config``'s ``None`` settings from its preset and checks every value.

  Args:
    config: the settings as given.
    preset: the model size and settings to resolve against (default: ``PRESETS[config.preset]``;
      the scaling benchmark passes sizes of its own).

  Raises:
    ConfigError: naming the first setting that cannot be run, and what it must be.
  """
  if preset is None:
    if config.preset not in PRESETS:
      raise ConfigError(f'--preset: unknown preset {config.preset!r}; choose from {list(PRESETS)}')
    preset = PRESETS[config.preset]
  setups = tuple(config.setups)
  if not setups:
    raise ConfigError('--setups: name at least one setup')
  parsed = tuple(_parse_setup('setups', text) for text in setups)
  setups = tuple(setup.name for setup in parsed)
  if len(set(setups)) != len(setups):
    raise _fail('setups', list(setups), 'must not repeat a setup')
  seeds = tuple(config.seeds)
  if not seeds:
    raise ConfigError('--seeds: name at least one seed')
  for seed in seeds:
    _check_positive_int('seeds', seed, minimum=0)
  if len(set(seeds)) != len(seeds):
    raise _fail('seeds', list(seeds), 'must not repeat a seed')
  _check_setups('lr_for', config.lr_for, setups)
  _check_setups('table_lr_for', config.table_lr_for, setups)

  def pick(name: str) -> Any:
    value = getattr(config, name)
    return getattr(preset, name) if value is None else value

  steps, batch_size, seq_len = pick('steps'), pick('batch_size'), pick('seq_len')
  warmup_steps, eval_every, eval_batches = (
    pick('warmup_steps'),
    pick('eval_every'),
    pick('eval_batches'),
  )
  vocab_size = pick('vocab_size')
  for name, value in (
    ('steps', steps),
    ('batch_size', batch_size),
    ('seq_len', seq_len),
    ('eval_every', eval_every),
    ('eval_batches', eval_batches),
    ('checkpoint_every', config.checkpoint_every),
    ('tokenizer_train_chars', config.tokenizer_train_chars),
  ):
    _check_positive_int(name, value)
  _check_positive_int('warmup_steps', warmup_steps, minimum=0)
  _check_positive_int('vocab_size', vocab_size, minimum=data_lib.MIN_VOCAB_SIZE)
  for name in ('lr', 'table_lr'):
    if getattr(config, name) is not None:
      _check_number(name, getattr(config, name), low=0.0, low_open=True)
  for name in ('lr_for', 'table_lr_for'):
    for value in getattr(config, name).values():
      _check_number(name, value, low=0.0, low_open=True)
  _check_number('b1', config.b1, low=0.0, high=1.0, high_open=True)
  _check_number('b2', config.b2, low=0.0, high=1.0, high_open=True)
  if config.table_b2 is not None:
    _check_number('table_b2', config.table_b2, low=0.0, high=1.0, high_open=True)
  _check_number('eps', config.eps, low=0.0)
  _check_number('weight_decay', config.weight_decay, low=0.0)
  _check_number('clip_norm', config.clip_norm, low=0.0)
  _check_number(
    'val_fraction', config.val_fraction, low=0.0, high=1.0, low_open=True, high_open=True
  )

  learning_rates = {}
  for setup in setups:
    body = config.lr_for.get(setup, config.lr if config.lr is not None else preset.lr)
    table = config.table_lr_for.get(setup, config.table_lr if config.table_lr is not None else body)
    learning_rates[setup] = (float(body), float(table))

  model = dataclasses.replace(
    preset.model,
    vocab_size=vocab_size,
    max_len=max(preset.model.max_len, seq_len),
    tie_embeddings=config.tie_embeddings,
  )
  return Plan(
    config=dataclasses.replace(config, setups=setups, seeds=seeds),
    model=model,
    setups=parsed,
    seeds=seeds,
    steps=steps,
    batch_size=batch_size,
    seq_len=seq_len,
    warmup_steps=min(warmup_steps, max(steps - 1, 0)),
    eval_every=eval_every,
    eval_batches=eval_batches,
    vocab_size=vocab_size,
    learning_rates=learning_rates,
    hyper=Hyperparameters(
      b1=config.b1,
      b2=config.b2,
      table_b2=config.table_b2,
      eps=config.eps,
      weight_decay=config.weight_decay,
      clip_norm=config.clip_norm,
    ),
    unigram_bias=config.unigram_bias,
    text=config.text,
    val_fraction=config.val_fraction,
    tokenizer_train_chars=config.tokenizer_train_chars,
    cache_dir=config.cache_dir,
    out=config.out,
    checkpoint_dir=config.checkpoint_dir,
    checkpoint_every=config.checkpoint_every,
    progress=config.progress,
  )
