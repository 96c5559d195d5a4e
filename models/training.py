"""One training run: a GPT under one optimizer setup from one seed, with its evaluations."""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import functools
import hashlib
import math
import time

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import ember_optax
from ember_optax.diagnostics import tree_bytes
from models import data as data_lib
from models.checkpoints import RunCheckpoints
from models.config import Plan
from models.gpt import GPT, table_labels
from models.optimizers import make_optimizer, table_transform

# Curve points use every CURVE_STRIDE-th validation batch: the same windows as the final
# evaluation, evenly spread, at an eighth of its cost.
CURVE_STRIDE = 8


@dataclasses.dataclass(frozen=True)
class Validation:
  """The fixed validation batches of a comparison, and which targets are rare.

  Attributes:
    batches: the final evaluation's batches, windows spread evenly over the validation stream.
    rare_mask: ``(vocab_size,)`` booleans, True for the less frequent half of the vocabulary.
  """

  batches: Sequence[tuple[np.ndarray, np.ndarray]]
  rare_mask: jax.Array

  @property
  def curve_batches(self) -> Sequence[tuple[np.ndarray, np.ndarray]]:
    return self.batches[::CURVE_STRIDE]

  @classmethod
  def build(cls, plan: Plan, corpus: data_lib.Corpus) -> Validation:
    batches = data_lib.val_batches(
      corpus.val_tokens,
      batch_size=plan.batch_size,
      seq_len=plan.seq_len,
      num_batches=plan.eval_batches,
    )
    return cls(batches, jnp.asarray(corpus.rare_token_mask()))


def init_model(plan: Plan, seed: int, corpus: data_lib.Corpus) -> GPT:
  """The run's model: the same for every setup of a seed."""
  bias = corpus.log_unigram() if plan.config.unigram_bias else None
  return GPT(plan.model, rngs=nnx.Rngs(seed), logit_bias_init=bias)


def _loss_sums(model: GPT, inputs, targets, rare_mask):
  logits = model(inputs).astype(jnp.float32)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  rare = rare_mask[targets]
  return losses.sum(), losses.size, jnp.where(rare, losses, 0.0).sum(), rare.sum()


@functools.partial(jax.jit, static_argnums=0)
def _eval_step(graphdef, params, inputs, targets, rare_mask):
  # Module level with a static graph: compiled once and reused by every setup and seed.
  return _loss_sums(nnx.merge(graphdef, params), inputs, targets, rare_mask)


def evaluate(graphdef, params, batches, rare_mask) -> tuple[float, float]:
  """``(loss, rare-token loss)``: mean cross-entropy over every target, and over the rare ones."""
  sums = np.zeros(4)
  for inputs, targets in batches:
    sums += np.array([float(v) for v in _eval_step(graphdef, params, inputs, targets, rare_mask)])
  return sums[0] / sums[1], (sums[2] / sums[3] if sums[3] else float('nan'))


def table_state_bytes(setup: str, plan: Plan, params) -> int:
  """Bytes of the state that ``setup``'s table transform keeps for the token tables alone."""
  labels = jax.tree.leaves(table_labels(params, plan.model))
  tables = [
    leaf
    for leaf, label in zip(jax.tree.leaves(params), labels, strict=True)
    if label == ember_optax.TABLE_LABEL
  ]
  return tree_bytes(jax.eval_shape(table_transform(setup, plan).init, tables))


def params_digest(params) -> str:
  """SHA-256 of every parameter's bytes, in tree order: equal digests, bitwise equal models."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(params):
    digest.update(np.asarray(leaf).tobytes())
  return digest.hexdigest()


def train_one(
  plan: Plan,
  setup: str,
  seed: int,
  corpus: data_lib.Corpus,
  validation: Validation,
  checkpoints: RunCheckpoints | None = None,
) -> dict:
  """Trains one model under ``setup`` from ``seed``; returns its metrics and curves.

  With ``checkpoints``, a finished run is read back, an unfinished one resumes from its last
  checkpoint, and the run is saved every ``checkpoints.every`` steps.
  """
  if checkpoints is not None and (result := checkpoints.finished_result()) is not None:
    return result
  # Functional NNX: a static graph and a pytree of parameters, and a pure jitted step over the
  # pytree, which keeps the per-step Python work (most of a small model's cost on a CPU) low.
  graphdef, params = nnx.split(init_model(plan, seed, corpus), nnx.Param)
  tx = make_optimizer(setup, plan)
  opt_state = tx.init(params)
  state_bytes = {
    'table_state_bytes': table_state_bytes(setup, plan, params),
    'model_state_bytes': tree_bytes(opt_state),
  }
  rare_mask = validation.rare_mask

  def loss_fn(params, inputs, targets):
    total, count, _, _ = _loss_sums(nnx.merge(graphdef, params), inputs, targets, rare_mask)
    return total / count

  @jax.jit
  def train_step(params, opt_state, inputs, targets):
    loss, grads = jax.value_and_grad(loss_fn)(params, inputs, targets)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  state = {'params': params, 'opt_state': opt_state}
  progress = {
    'step': 0,
    'train_curve': [],
    'val_curve': [],
    'step_times': [],
    'diverged_at_step': None,
  }
  if checkpoints is not None and (restored := checkpoints.restore(state)) is not None:
    state, progress = restored
  else:
    progress['val_curve'].append(
      (0, evaluate(graphdef, params, validation.curve_batches, rare_mask)[0])
    )
  bar = None
  if plan.config.progress:
    from tqdm.auto import tqdm

    bar = tqdm(
      total=plan.steps,
      initial=progress['step'],
      desc=f'{setup:>9} seed {seed}',
      unit='step',
      leave=True,
    )
  batches = data_lib.train_batches(
    corpus.train_tokens,
    batch_size=plan.batch_size,
    seq_len=plan.seq_len,
    steps=plan.steps,
    seed=seed,
    start=progress['step'],
  )
  params, opt_state = state['params'], state['opt_state']
  for step, (inputs, targets) in enumerate(batches, start=progress['step'] + 1):
    start = time.perf_counter()
    params, opt_state, loss = train_step(params, opt_state, inputs, targets)
    loss = float(loss)  # Waits for the step: the timing covers the whole step.
    progress['step_times'].append(time.perf_counter() - start)
    progress['step'] = step
    if not math.isfinite(loss):
      # A diverged run is a result (the learning rate is too high), not a crash: it is reported
      # with NaN losses so that a learning-rate sweep can go on.
      progress['diverged_at_step'] = step
      print(f'[train] {setup} seed {seed}: loss is {loss} at step {step}; stopping this run')
      break
    progress['train_curve'].append((step, loss))
    if step % plan.eval_every == 0 and step < plan.steps:
      progress['val_curve'].append(
        (step, evaluate(graphdef, params, validation.curve_batches, rare_mask)[0])
      )
    if checkpoints is not None and step < plan.steps:
      checkpoints.save(step, {'params': params, 'opt_state': opt_state}, progress)
    if bar is not None:
      bar.set_postfix(loss=f'{loss:.3f}', val=f'{progress["val_curve"][-1][1]:.3f}', refresh=False)
      bar.update()
  if bar is not None:
    bar.close()
  diverged = progress['diverged_at_step'] is not None
  if diverged:
    final_val = rare_val = float('nan')
  else:
    # The final evaluation is the curve's last point and the result's numbers alike.
    final_val, rare_val = evaluate(graphdef, params, validation.batches, rare_mask)
    progress['val_curve'].append((plan.steps, final_val))
  body_lr, table_lr = plan.learning_rates[setup]
  step_times = progress['step_times']
  # The first step of a process compiles; the mean is over the others.
  timed = step_times[1:] or step_times
  train_curve = progress['train_curve']
  result = {
    'setup': setup,
    'seed': seed,
    'lr': body_lr,
    'table_lr': table_lr,
    'final_val_loss': final_val,
    'rare_val_loss': rare_val,
    'initial_val_loss': progress['val_curve'][0][1],
    'final_train_loss': float('nan')
    if diverged
    else float(np.mean([v for _, v in train_curve[-10:]])),
    **state_bytes,
    'mean_step_time_s': float(np.mean(timed)),
    'diverged_at_step': progress['diverged_at_step'],
    'params_sha256': params_digest(params),
    'train_loss_curve': [list(point) for point in train_curve],
    'val_loss_curve': [list(point) for point in progress['val_curve']],
  }
  if checkpoints is not None:
    checkpoints.finish(result)
  return result
