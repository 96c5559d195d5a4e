"""The base model of post-training: pretrained once with the main job's recipe, then cached.

Fine-tuning (``models.sft``) and RL (``models.rl``) compare table optimizers from one pretrained
checkpoint, so that every setup starts from the same model. The base model is the main job's
model and recipe (preset, steps, batches, schedule, the preset's tuned learning rate) trained
under AdamW everywhere (``PRETRAIN_SETUP``), the optimizer no setup of the comparison is
favoured by, from seed ``seed``.

The checkpoint is cached under ``<root>/<preset>-seed<seed>-<key>/``: ``params/`` (Orbax) and
``info.json`` (written last, so a folder without it is an unfinished build and is built again).
The key hashes everything the parameters depend on (the run's training settings and the corpus's
cache key, which hashes the corpus and its tokenizer), as the corpus cache does; ``root`` is
``$EMBER_OPTAX_CACHE_DIR/pretrained``, else ``~/.cache/ember_optax/pretrained``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
import shutil
from typing import Any

from flax import nnx
import jax
import orbax.checkpoint as ocp

from models.cli import ConfigError, option
from models.data import corpus as data_lib
from models.optim.registry import Setup
from models.reporting import results as results_lib
from models.training.config import Plan, TrainConfig, corpus_option, resolve
from models.training.loop import Comparison, train_one
from models.training.presets import PRESETS

PRETRAIN_SETUP = 'adamw'
INFO_FILE = 'info.json'
# Bump when anything that changes a cached checkpoint changes (its files, the recipe's code).
CACHE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Pretrained:
  """A pretrained base model.

  Attributes:
    plan: the pretraining run's resolved settings (its model shape included).
    params: the trained parameters (an ``nnx.State`` of the GPT's ``nnx.Param``).
    info: the run's result (losses, curves, times) and its settings.
    path: the checkpoint's folder.
    built: True when this call trained it, False when it was read from the cache.
  """

  plan: Plan
  params: Any
  info: dict
  path: Path
  built: bool


def default_root() -> Path:
  """``$EMBER_OPTAX_CACHE_DIR/pretrained``, beside the corpus cache."""
  return data_lib.default_cache_dir().parent / 'pretrained'


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
  """The base model's settings: the main job's recipe at ``preset``, one AdamW run."""

  preset: str = option(
    'small', "the main job's model size and recipe to pretrain", choices=tuple(PRESETS)
  )
  seed: int = option(0, "the base model's initialization and batch-order seed")
  steps: int | None = option(None, "pretraining steps (default: the preset's)")
  text: str | None = corpus_option('text')
  cache_dir: str | None = corpus_option('cache_dir')
  pretrained_dir: str | None = option(
    None,
    'cache of pretrained checkpoints (default: $EMBER_OPTAX_CACHE_DIR/pretrained, else '
    '~/.cache/ember_optax/pretrained)',
  )

  def train_config(self) -> TrainConfig:
    """The main job's settings of this one run."""
    return TrainConfig(
      preset=self.preset,
      setups=(PRETRAIN_SETUP,),
      seeds=(self.seed,),
      steps=self.steps,
      text=self.text,
      cache_dir=self.cache_dir,
      progress=False,
    )


def checkpoint_key(plan: Plan, corpus: data_lib.Corpus) -> str:
  """The hash of everything the pretrained parameters depend on."""
  settings = {
    'version': CACHE_VERSION,
    **plan.training_settings(),
    'setup': PRETRAIN_SETUP,
    'seed': plan.seeds[0],
    'learning_rates': plan.learning_rates[PRETRAIN_SETUP],
    'corpus': corpus.cache_dir.name,
  }
  return hashlib.sha256(results_lib.dumps(settings).encode()).hexdigest()[:16]


def load_or_pretrain(
  config: PretrainConfig, corpus: data_lib.Corpus | None = None, verbose: bool = True
) -> Pretrained:
  """The base model of ``config``: read from the cache, or trained and cached.

  Args:
    config: the settings.
    corpus: the corpus, if already loaded (it must match ``config``'s corpus settings).
    verbose: print what is read or trained.

  Raises:
    ConfigError, CorpusError: for settings or a corpus that cannot be run, before training.
  """
  plan = resolve(config.train_config())
  comparison = Comparison.build(plan, corpus, verbose=verbose)
  seed = config.seed
  key = checkpoint_key(plan, comparison.corpus)
  root = config.pretrained_dir
  base = Path(root).expanduser() if root is not None else default_root()
  path = base / f'{config.preset}-seed{seed}-{key}'
  abstract = nnx.state(nnx.eval_shape(lambda: comparison.init_model(seed)), nnx.Param)
  like = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract)
  if (path / INFO_FILE).exists():
    with ocp.StandardCheckpointer() as checkpointer:
      params = checkpointer.restore((path / 'params').resolve(), like)
    info = results_lib.read_json(path / INFO_FILE)
    if verbose:
      print(f'[pretrain] read from {path} (val loss {info["result"]["final_val_loss"]:.4f})')
    return Pretrained(plan, params, info, path, built=False)
  log = print if verbose else (lambda *a, **k: None)
  log(f'[pretrain] training the base model ({PRETRAIN_SETUP}, seed {seed}) for {path}', flush=True)
  result, params = train_one(
    comparison, Setup.parse(PRETRAIN_SETUP), seed, log=log, return_params=True
  )
  if result['diverged_at_step'] is not None:
    step = result['diverged_at_step']
    raise ConfigError(f'pretraining diverged at step {step}; nothing was cached (check --text)')
  # Built in a temporary folder and renamed into place: a stopped build leaves no checkpoint
  # that looks finished.
  tmp = base / f'.{path.name}.{os.getpid()}.tmp'
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save((tmp / 'params').resolve(), params)
  info = {
    'settings': json.loads(results_lib.dumps(plan.training_settings())),
    'setup': PRETRAIN_SETUP,
    'seed': seed,
    'corpus': comparison.corpus.info['corpus'],
    'corpus_cache': comparison.corpus.cache_dir.name,
    'result': result,
  }
  results_lib.write_json(tmp / INFO_FILE, info)
  if (path / INFO_FILE).exists():  # Another process finished the same build first.
    shutil.rmtree(tmp)
  else:
    shutil.rmtree(path, ignore_errors=True)  # An unfinished build of the same key.
    tmp.replace(path)
  log(f'[pretrain] val loss {result["final_val_loss"]:.4f}; cached in {path}')
  return Pretrained(plan, params, info, path, built=True)
