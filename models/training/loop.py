"""The training loop of every program: what the runs of a comparison share, and one run at a time.

:func:`run_steps` is the one loop: it reads back a finished run, resumes an unfinished one from its
checkpoint, saves, times the steps, shows progress, stops a diverged run and digests the final
parameters, around a step, a batch source and the curves of the caller's. :func:`train_one` is
the language model's run on it; RL's GRPO runs (``models.training.rl_runs``) are another.

:class:`Comparison` holds what the runs of a comparison share (the plan, the corpus, the fixed
validation batches with their rare-token mask, the model's parameter count); the main job and the
quality benchmark both build it once and call :func:`train_one` for every setup, seed and
learning rate. Fine-tuning is the same loop on another :class:`Comparison`: the runs start from
given parameters (a pretrained model), draw their batches from another source (instruction
pairs) and are also evaluated on other data (the pretraining domain, for forgetting).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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
from models.nets.ngram import NgramConfig
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

  def init_model(self, seed: int, ngram: NgramConfig | None = None) -> GPT:
    """The run's model: the same for every setup of a seed (``start_params`` if given); with
    ``ngram``, a hashed n-gram table too (the other parameters as without it)."""
    bias = self.corpus.log_unigram() if self.plan.unigram_bias else None
    model = GPT(self.plan.model, rngs=nnx.Rngs(seed), logit_bias_init=bias, ngram=ngram)
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
    head_label = None if setup.head is None else registry.HEAD_LABEL
    return registry.make_optimizer(
      setup,
      functools.partial(table_labels, config=plan.model, head_label=head_label),
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


@dataclasses.dataclass(frozen=True)
class FinishedSteps:
  """A run after its last step (or the step where it diverged), for the caller's result.

  Attributes:
    state: the run's final state, ``{"params": ..., "opt_state": ...}``.
    progress: the run's progress: the loop's ``step``, ``diverged_at_step``, ``step_times`` and
      ``elapsed_s``, and the caller's curves.
  """

  state: dict[str, Any]
  progress: dict[str, Any]
  started: float
  elapsed_before: float

  @property
  def diverged(self) -> bool:
    return self.progress['diverged_at_step'] is not None

  def summary(self) -> dict[str, Any]:
    """The loop's part of the run's result: ``mean_step_time_s`` (the first step of a process
    compiles; the mean is over the others), ``train_time_s`` (the run's wall time until now, over
    every resumption), ``diverged_at_step`` and ``params_sha256`` (:func:`params_digest`)."""
    step_times = self.progress['step_times']
    timed = step_times[1:] or step_times
    return {
      'mean_step_time_s': float(np.mean(timed)),
      'train_time_s': self.elapsed_before + time.perf_counter() - self.started,
      'diverged_at_step': self.progress['diverged_at_step'],
      'params_sha256': params_digest(self.state['params']),
    }


def run_steps(
  name: str,
  state: dict[str, Any],
  *,
  steps: int,
  step: Callable[[int, dict[str, Any], Any], tuple[dict[str, Any], dict[str, Any]]],
  batches: Callable[[int], Iterable[Any]],
  begin: Callable[[dict[str, Any]], dict[str, Any]],
  record: Callable[[int, dict[str, Any], dict[str, Any], dict[str, Any]], Mapping[str, str] | None],
  finish: Callable[[FinishedSteps], dict],
  checkpoints: RunCheckpoints | None = None,
  log: Callable[[str], None] = print,
  bar: str | None = None,
) -> tuple[dict, dict[str, Any] | None]:
  """Runs one run's steps: the loop every program shares, around a step of the caller's.

  The loop reads back a run that finished earlier, resumes an unfinished one from its last
  checkpoint (and logs from which step), saves it every ``checkpoints.every`` steps, times every
  step, shows a progress bar, and stops a run whose loss is not finite: a diverged run is a
  result (its learning rate is too high), not a crash, so that a learning-rate search goes on.

  Args:
    name: the run's name in its log lines, such as ``"[train] ember seed 0"``.
    state: the fresh run's state, ``{"params": ..., "opt_state": ...}``: what is checkpointed
      (a checkpoint is restored into its structure).
    steps: the run's last step (never checkpointed: the run finishes there instead).
    step: ``step(number, state, batch) -> (state, metrics)``, step ``number`` (from 1);
      ``metrics["loss"]`` is read on the host (so that the step's time covers all of it) and
      ends the run where it is not finite.
    batches: ``batches(start)`` yields the batches of steps ``start + 1`` on; the run ends
      where they end.
    begin: ``begin(state)`` -> the caller's entries of a fresh run's progress (such as curves
      with their step-0 point); not called for a resumed run, whose progress is restored.
    record: ``record(number, state, metrics, progress)`` after each step with a finite loss
      (``metrics["loss"]`` a float): adds the step's points to the caller's curves in
      ``progress``; returns what the progress bar shows beside the loss, or None.
    finish: ``finish(run)`` -> the run's result, from its :class:`FinishedSteps` (the final
      evaluation, with ``run.summary()``'s measures), recorded in ``checkpoints``.
    checkpoints: the run's checkpoints, or None: nothing read back, resumed or saved.
    log: where the run's messages go.
    bar: the progress bar's label; None: no bar.

  Returns:
    ``(result, state)``: the run's result and final state; ``state`` is None for a run read
    back (finished earlier), whose state is not kept.
  """
  if checkpoints is not None and (result := checkpoints.finished_result()) is not None:
    log(f'{name}: finished earlier, read from {checkpoints.result_path}')
    return result, None
  started = time.perf_counter()
  restored = None if checkpoints is None else checkpoints.restore(state)
  if restored is not None:
    state, progress = restored
    progress.setdefault('step_times', [])  # Not in RL's checkpoints of earlier versions.
    log(f'{name}: resumed from step {progress["step"]} of {steps} ({checkpoints.directory})')
  else:
    fresh = {'step': 0, 'diverged_at_step': None, 'elapsed_s': 0.0, 'step_times': []}
    progress = {**fresh, **begin(state)}
  progress_bar = None
  if bar is not None:
    from tqdm.auto import tqdm

    progress_bar = tqdm(total=steps, initial=progress['step'], desc=bar, unit='step', leave=True)
  # Wall time of the run's earlier parts (before a resumption) plus this one's so far.
  elapsed_before = progress['elapsed_s']
  for number, batch in enumerate(batches(progress['step']), start=progress['step'] + 1):
    step_started = time.perf_counter()
    state, metrics = step(number, state, batch)
    loss = float(metrics['loss'])  # Waits for the step: the timing covers the whole step.
    progress['step_times'].append(time.perf_counter() - step_started)
    progress['step'] = number
    if not math.isfinite(loss):
      progress['diverged_at_step'] = number
      log(f'{name}: loss is {loss} at step {number}; stopping this run')
      break
    shown = record(number, state, {**metrics, 'loss': loss}, progress)
    if checkpoints is not None and number < steps:
      progress['elapsed_s'] = elapsed_before + time.perf_counter() - started
      checkpoints.save(number, state, progress)
    if progress_bar is not None:
      progress_bar.set_postfix(loss=f'{loss:.3f}', **(shown or {}), refresh=False)
      progress_bar.update()
  if progress_bar is not None:
    progress_bar.close()
  result = finish(FinishedSteps(state, progress, started, elapsed_before))
  if checkpoints is not None:
    checkpoints.finish(result)
  return result, state


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

  The steps run in :func:`run_steps`; this function gives them the language model's train step,
  the comparison's batches, and the validation curve and final evaluation.

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
      (parameter pytrees), for diagnostics of the steps themselves (timed with the step).
    return_params: also return the trained parameters, as ``(result, params)`` (a run that
      finished earlier has none to return: it raises ``ValueError``).
  """
  plan = comparison.plan
  name = setup.name
  if return_params and checkpoints is not None and checkpoints.finished_result() is not None:
    raise ValueError(f'{name} seed {seed} finished earlier: its parameters are not kept')
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

  def step(number: int, state: dict, batch: tuple[np.ndarray, np.ndarray]) -> tuple[dict, dict]:
    params, opt_state, loss = train_step(state['params'], state['opt_state'], *batch)
    if observe is not None:
      observe(number, state['params'], params)
    return {'params': params, 'opt_state': opt_state}, {'loss': loss}

  def record(number: int, state: dict, metrics: dict, progress: dict) -> dict[str, str]:
    progress['train_curve'].append((number, metrics['loss']))
    if number % plan.eval_every == 0 and number < plan.steps:
      progress['val_curve'].append((number, curve_point(state['params'])))
    return {'val': f'{progress["val_curve"][-1][1]:.3f}'}

  def finish(run: FinishedSteps) -> dict:
    params, progress = run.state['params'], run.progress
    if run.diverged:
      final_val = rare_val = float('nan')
    else:
      # The final evaluation is the curve's last point and the result's numbers alike.
      final_val, rare_val = step_lib.evaluate(graphdef, params, comparison.val_batches, rare_mask)
      progress['val_curve'].append((plan.steps, final_val))
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
      if run.diverged
      else float(np.mean([v for _, v in train_curve[-10:]])),
      **state_bytes,
      **run.summary(),
      'train_loss_curve': [list(point) for point in train_curve],
      'val_loss_curve': [list(point) for point in progress['val_curve']],
    }
    for eval_name, eval_batches in comparison.extra_evals.items():
      result[f'{eval_name}_loss'] = (
        float('nan')
        if run.diverged
        else step_lib.evaluate(graphdef, params, eval_batches, rare_mask)[0]
      )
    return result

  result, state = run_steps(
    f'[train] {name} seed {seed}',
    {'params': params, 'opt_state': opt_state},
    steps=plan.steps,
    step=step,
    batches=lambda start: comparison.train_batches(seed, start=start),
    begin=lambda state: {'train_curve': [], 'val_curve': [(0, curve_point(state['params']))]},
    record=record,
    finish=finish,
    checkpoints=checkpoints,
    log=log,
    bar=f'{name:>9} seed {seed}' if plan.progress else None,
  )
  return (result, state['params']) if return_params else result
