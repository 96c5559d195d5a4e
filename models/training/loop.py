"""The training loop of a comparison: what every run shares, built once, and one run at a time.

:class:`Comparison` holds what the runs of a comparison share (the plan, the corpus, the fixed
validation batches with their rare-token mask, the model's parameter count); the main job and the
quality benchmark both build it once and call :func:`train_one` for every setup, seed and
learning rate. Fine-tuning is the same loop on another :class:`Comparison`: the runs start from
given parameters (a pretrained model), draw their batches from another source (instruction
pairs) and are also evaluated on other data (the pretraining domain, for forgetting).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
import dataclasses
import functools
import hashlib
import math
import time
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ember_optax.diagnostics import tree_bytes
from models.data import corpus as data_lib
from models.nets.gpt import GPT, count_params, table_labels
from models.optim import registry
from models.training import step as step_lib
from models.training.checkpoints import RunCheckpoints
from models.training.config import Plan

# Curve points use every CURVE_STRIDE-th validation batch: the same windows as the final
# evaluation, evenly spread, at an eighth of its cost.
CURVE_STRIDE = 8


@dataclasses.dataclass(frozen=True)
class Comparison:
  """What every run of a comparison shares, computed once.

  Attributes:
    plan: the resolved settings.
    corpus: the tokenized corpus, checked to hold a sequence on each side.
    val_batches: the final evaluation's batches, windows spread evenly over the validation set.
    rare_mask: ``(vocab_size,)`` booleans, True for the less frequent half of the vocabulary.
    n_params: the model's parameter count (from shapes alone).
    start_params: the parameters every run starts from (a pretrained model's); None: each
      seed's fresh initialization.
    train_source: ``train_source(seed, start)`` yields the run's ``(inputs, targets)`` batches
      from step ``start`` on (targets -1 where not scored); None: windows of the corpus's
      training stream (``corpus.train_batches``).
    extra_evals: more evaluations at the end of a run, by name: each run's result gets
      ``"<name>_loss"``, the mean cross-entropy over those batches.
  """

  plan: Plan
  corpus: data_lib.Corpus
  val_batches: Sequence[tuple[np.ndarray, np.ndarray]]
  rare_mask: jax.Array
  n_params: int
  start_params: Any | None = None
  train_source: Callable[[int, int], Iterator[tuple[np.ndarray, np.ndarray]]] | None = None
  extra_evals: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray]]] = dataclasses.field(
    default_factory=dict
  )

  @property
  def curve_batches(self) -> Sequence[tuple[np.ndarray, np.ndarray]]:
    return self.val_batches[::CURVE_STRIDE]

  @classmethod
  def build(
    cls, plan: Plan, corpus: data_lib.Corpus | None = None, verbose: bool = True
  ) -> Comparison:
    """Loads (or checks) the corpus and builds the validation set and the parameter count."""
    if corpus is None:
      corpus = data_lib.load_corpus(
        plan.text,
        vocab_size=plan.vocab_size,
        val_fraction=plan.val_fraction,
        tokenizer_train_chars=plan.tokenizer_train_chars,
        cache_dir=plan.cache_dir,
        verbose=verbose,
      )
    data_lib.check_fits(corpus, plan.seq_len)
    batches = data_lib.val_batches(
      corpus.val_tokens,
      batch_size=plan.batch_size,
      seq_len=plan.seq_len,
      num_batches=plan.eval_batches,
    )
    abstract = nnx.eval_shape(lambda: GPT(plan.model, rngs=nnx.Rngs(0)))
    return cls(plan, corpus, batches, jnp.asarray(corpus.rare_token_mask()), count_params(abstract))

  def init_model(self, seed: int) -> GPT:
    """The run's model: the same for every setup of a seed (``start_params`` if given)."""
    bias = self.corpus.log_unigram() if self.plan.unigram_bias else None
    model = GPT(self.plan.model, rngs=nnx.Rngs(seed), logit_bias_init=bias)
    if self.start_params is not None:
      nnx.update(model, self.start_params)
    return model

  def train_batches(self, seed: int, start: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The ``(inputs, targets)`` batches of a run of ``seed`` from step ``start`` on."""
    if self.train_source is not None:
      return self.train_source(seed, start)
    plan = self.plan
    return data_lib.train_batches(
      self.corpus.train_tokens,
      batch_size=plan.batch_size,
      seq_len=plan.seq_len,
      steps=plan.steps,
      seed=seed,
      start=start,
    )

  def optimizer(
    self,
    setup: registry.Setup | str,
    learning_rates: tuple[float, float] | None = None,
  ) -> optax.GradientTransformation:
    """``setup``'s optimizer for this GPT, routed by the model's own table labels.

    The labels are a function of the parameters the optimizer is given, as
    ``ember_optax.ember_adamw``'s are, so the same optimizer serves the functional train step
    (an ``nnx.State`` of parameters) and an ``nnx.Optimizer`` (Tunix's trainers), whose
    gradients are another view of the same tree.

    Args:
      setup: a setup or its name (``"ember"``, ``"ember+muon"``).
      learning_rates: peak ``(body, tables)`` rates on the plan's schedule (default: the plan's
        for ``setup``).
    """
    plan = self.plan
    if isinstance(setup, str):
      setup = registry.Setup.parse(setup)
    if learning_rates is None:
      learning_rates = plan.learning_rates[setup.name]
    body_peak, table_peak = learning_rates
    return registry.make_optimizer(
      setup,
      functools.partial(table_labels, config=plan.model),
      learning_rate=plan.schedule(body_peak),
      table_learning_rate=None if table_peak == body_peak else plan.schedule(table_peak),
      hyper=plan.hyper,
      vocab_size=plan.vocab_size,
    )


def params_digest(params) -> str:
  """SHA-256 of every parameter's bytes, in tree order: equal digests, bitwise equal models."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(params):
    digest.update(np.asarray(leaf).tobytes())
  return digest.hexdigest()


def train_one(
  comparison: Comparison,
  setup: registry.Setup,
  seed: int,
  learning_rates: tuple[float, float] | None = None,
  checkpoints: RunCheckpoints | None = None,
  log: Callable[[str], None] = print,
  observe: Callable[[int, Any, Any], None] | None = None,
  return_params: bool = False,
) -> dict | tuple[dict, Any]:
  """Trains one model under ``setup`` from ``seed``; returns its metrics and curves.

  Args:
    comparison: what the runs share.
    setup: the optimizer setup.
    seed: the initialization and batch-order seed.
    learning_rates: peak ``(body, tables)`` rates (default: the plan's for ``setup``).
    checkpoints: if given, a finished run is read back, an unfinished one resumes from its
      last checkpoint (and says from which step), and the run is saved every
      ``checkpoints.every`` steps.
    log: where the run's messages go.
    observe: if given, called after every step as ``observe(step, params_before, params_after)``
      (parameter pytrees), for diagnostics of the steps themselves.
    return_params: also return the trained parameters, as ``(result, params)`` (a run that
      finished earlier has none to return: it raises ``ValueError``).
  """
  plan = comparison.plan
  name = setup.name
  if checkpoints is not None and (result := checkpoints.finished_result()) is not None:
    if return_params:
      raise ValueError(f'{name} seed {seed} finished earlier: its parameters are not kept')
    log(f'[train] {name} seed {seed}: finished earlier, read from {checkpoints.result_path}')
    return result
  if learning_rates is None:
    learning_rates = plan.learning_rates[name]
  graphdef, params = nnx.split(comparison.init_model(seed), nnx.Param)
  tx = comparison.optimizer(setup, learning_rates)
  opt_state = tx.init(params)
  state_bytes = {
    'table_state_bytes': registry.table_state_bytes(opt_state, table_labels(params, plan.model)),
    'model_state_bytes': tree_bytes(opt_state),
  }
  train_step = jax.jit(step_lib.train_step(graphdef, tx))
  rare_mask = comparison.rare_mask

  def curve_point(params) -> float:
    return step_lib.evaluate(graphdef, params, comparison.curve_batches, rare_mask)[0]

  started = time.perf_counter()
  state = {'params': params, 'opt_state': opt_state}
  progress = {
    'step': 0,
    'train_curve': [],
    'val_curve': [],
    'step_times': [],
    'diverged_at_step': None,
    'elapsed_s': 0.0,
  }
  if checkpoints is not None and (restored := checkpoints.restore(state)) is not None:
    state, progress = restored
    log(
      f'[train] {name} seed {seed}: resumed from step {progress["step"]} of {plan.steps} '
      f'({checkpoints.directory})'
    )
  else:
    progress['val_curve'].append((0, curve_point(params)))
  bar = None
  if plan.progress:
    from tqdm.auto import tqdm

    bar = tqdm(
      total=plan.steps,
      initial=progress['step'],
      desc=f'{name:>9} seed {seed}',
      unit='step',
      leave=True,
    )
  batches = comparison.train_batches(seed, start=progress['step'])
  params, opt_state = state['params'], state['opt_state']
  # Wall time of the run's earlier parts (before a resumption) plus this one's so far.
  elapsed_before = progress.get('elapsed_s', 0.0)
  for step, (inputs, targets) in enumerate(batches, start=progress['step'] + 1):
    start = time.perf_counter()
    before = params
    params, opt_state, loss = train_step(params, opt_state, inputs, targets)
    loss = float(loss)  # Waits for the step: the timing covers the whole step.
    progress['step_times'].append(time.perf_counter() - start)
    if observe is not None:
      observe(step, before, params)
    progress['step'] = step
    if not math.isfinite(loss):
      # A diverged run is a result (the learning rate is too high), not a crash: it is reported
      # with undefined losses so that a learning-rate sweep can go on.
      progress['diverged_at_step'] = step
      log(f'[train] {name} seed {seed}: loss is {loss} at step {step}; stopping this run')
      break
    progress['train_curve'].append((step, loss))
    if step % plan.eval_every == 0 and step < plan.steps:
      progress['val_curve'].append((step, curve_point(params)))
    if checkpoints is not None and step < plan.steps:
      progress['elapsed_s'] = elapsed_before + time.perf_counter() - started
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
    final_val, rare_val = step_lib.evaluate(graphdef, params, comparison.val_batches, rare_mask)
    progress['val_curve'].append((plan.steps, final_val))
  step_times = progress['step_times']
  # The first step of a process compiles; the mean is over the others.
  timed = step_times[1:] or step_times
  train_curve = progress['train_curve']
  result = {
    'setup': name,
    'seed': seed,
    'lr': learning_rates[0],
    'table_lr': learning_rates[1],
    'final_val_loss': final_val,
    'rare_val_loss': rare_val,
    'initial_val_loss': progress['val_curve'][0][1],
    'final_train_loss': float('nan')
    if diverged
    else float(np.mean([v for _, v in train_curve[-10:]])),
    **state_bytes,
    'mean_step_time_s': float(np.mean(timed)),
    'train_time_s': elapsed_before + time.perf_counter() - started,
    'diverged_at_step': progress['diverged_at_step'],
    'params_sha256': params_digest(params),
    'train_loss_curve': [list(point) for point in train_curve],
    'val_loss_curve': [list(point) for point in progress['val_curve']],
  }
  for eval_name, eval_batches in comparison.extra_evals.items():
    result[f'{eval_name}_loss'] = (
      float('nan') if diverged else step_lib.evaluate(graphdef, params, eval_batches, rare_mask)[0]
    )
  if checkpoints is not None:
    checkpoints.finish(result)
  return (result, params) if return_params else result
