"""What Ember frees in a whole train step of published models, from XLA's memory analysis.

For each published decoder shape (``models.published``: GPT-2 small, Llama-3-8B, Gemma-3-1B,
Qwen2.5-0.5B) and each optimizer setup, the whole train step (forward, cross-entropy loss,
backward, optimizer update, ``optax.apply_updates``; parameters and optimizer state donated) is
lowered from abstract parameters and compiled ahead of time on CPU, and
``compiled.memory_analysis()`` gives its argument, output, aliased and temporary bytes. Nothing is
allocated and nothing runs, so an 8B-parameter model is measured on a laptop.

Setups (the body always gets AdamW; they differ on the token tables only):

* ``adamw``: ``optax.adamw`` on every parameter.
* ``ember``: ``ember_optax.ember_adamw``: Ember on the tables.
* ``adafactor``: ``optax.adafactor`` on the tables (``multiply_by_parameter_scale=False``) and
  ``optax.adamw`` on the body, routed by ``optax.partition``.

Precisions: ``float32`` parameters, or ``bfloat16`` parameters (and activations) with float32
optimizer statistics. ``optax.adamw`` keeps its second moment in the parameters' dtype whatever
``mu_dtype`` says, so every setup is wrapped in :func:`float32_statistics`, which hands the
optimizer float32 views of the parameters: AdamW's ``mu`` and ``nu``, Adafactor's factors and
Ember's statistics are all float32.

Which numbers hold where: optimizer-state bytes, arguments (parameters + state + the token batch),
outputs and donated (aliased) bytes follow from shapes and dtypes alone and are the same on every
backend. Temporaries (gradients, activations, the optimizer's scratch) are XLA:CPU's buffer
assignment; a GPU or TPU compiler fuses and schedules differently, so take them as an estimate.

Also measured: the largest batch that fits in a memory budget (compile-only search), the
estimate against the resident memory of really running the step (``small`` GPT of
``models.gpt``), and the same analysis per device on 8 virtual CPU devices with a fully sharded
(FSDP-style) layout. Every shape and layout is analyzed in a process of its own (``--jobs`` at a
time); the sharded ones start JAX with the virtual devices.

Run::

  python -m models.bench_memory --out models/results/bench_memory
  python -m models.bench_memory --models gpt2 --precisions bfloat16 --devices 0
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
import dataclasses
import functools
import json
import math
import os
from pathlib import Path
import re
import resource
import subprocess
import sys
import threading
import time
from typing import Any, NamedTuple

from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import optax

import ember_optax
from ember_optax.diagnostics import state_bytes_by_group, tree_bytes
from models import published
from models.reporting import format_bytes, markdown_table

OPTIMIZERS = ("adamw", "ember", "adafactor")
PRECISIONS = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Label names of ember_optax.token_table_labels: "ember" marks a token table, "adamw" the rest.
TABLE, BODY = "ember", "adamw"
ADAFACTOR = "adafactor"
LEARNING_RATE = 1e-3
GIB = 2**30
DEFAULT_BUDGETS_GIB = (16, 24, 80)
# The 5% criterion: Ember may add at most this share of its largest table to the step's scratch.
TEMP_ALLOWANCE = 0.05
# Batches past this many sequences per device are not searched (no budget here comes near it).
MAX_BATCH = 1 << 16
FSDP_AXIS = "fsdp"


# -- Optimizers ------------------------------------------------------------------------------


def float32_statistics(
  optimizer: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
  """Runs ``optimizer`` on float32 views of the parameters, so that its statistics are float32.

  ``optax.adamw`` and ``optax.adafactor`` size their statistics by the parameters' dtype (Adam's
  ``nu`` is ``zeros_like(params)``; ``mu_dtype`` covers only ``mu``), so bfloat16 parameters
  would get bfloat16 statistics. Here ``init`` and ``update`` see the parameters cast to float32
  (inside a jitted step the cast fuses into its consumers, and is dropped where only shapes are
  read), and updates come back in the gradients' dtype. Float32 parameters are unaffected.

  Args:
    optimizer: any Optax transformation.

  Returns:
    The wrapped :class:`optax.GradientTransformationExtraArgs`; its state is ``optimizer``'s.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> params = {'w': jnp.zeros((4, 4), jnp.bfloat16)}
    >>> state = float32_statistics(optax.adamw(1e-3)).init(params)
    >>> state[0].nu['w'].dtype
    dtype('float32')
  """

  def init_fn(params: optax.Params) -> optax.OptState:
    return optimizer.init(optax.tree.cast(params, jnp.float32))

  def update_fn(updates, state, params=None, **extra_args):
    float32_params = None if params is None else optax.tree.cast(params, jnp.float32)
    new_updates, state = optax.with_extra_args_support(optimizer).update(
      updates, state, float32_params, **extra_args
    )
    return optax.tree.cast_like(new_updates, updates), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def make_optimizer(name: str, labels: Any) -> optax.GradientTransformationExtraArgs:
  """The whole-model optimizer of setup ``name``, with float32 statistics.

  Args:
    name: ``"adamw"``, ``"ember"`` or ``"adafactor"``.
    labels: ``"ember"`` (token table) or ``"adamw"`` (the rest) per parameter, as
      ``ember_optax.token_table_labels`` or ``models.published.table_labels`` give them.

  Returns:
    The optimizer, wrapped in :func:`float32_statistics`.
  """
  body = optax.adamw(LEARNING_RATE, mu_dtype=jnp.float32)
  if name == "adamw":
    optimizer = body
  elif name == "ember":
    optimizer = ember_optax.ember_adamw(LEARNING_RATE, labels=labels)
  elif name == "adafactor":
    tables = optax.adafactor(LEARNING_RATE, multiply_by_parameter_scale=False)
    optimizer = optax.partition({ADAFACTOR: tables, BODY: body}, _setup_labels(name, labels))
  else:
    raise ValueError(f"unknown optimizer {name!r}; choose from {list(OPTIMIZERS)}")
  return float32_statistics(optimizer)


def _setup_labels(name: str, labels: Any) -> Any:
  """The labels under which setup ``name`` keeps the tables' state."""
  if name != ADAFACTOR:
    return labels
  return jax.tree.map(lambda label: ADAFACTOR if label == TABLE else label, labels)


class StateBytes(NamedTuple):
  """Optimizer-state bytes of the token tables and of the whole model."""

  tables: int
  model: int


def optimizer_state_bytes(name: str, params: Any, labels: Any,
                          param_shardings: Any | None = None) -> StateBytes:
  """Optimizer-state bytes of setup ``name`` on ``params``: the token tables' and the model's.

  Computed from shapes alone (``jax.eval_shape``), so ``params`` may be abstract; exact on every
  backend. The tables' share is split out by ``ember_optax.diagnostics.state_bytes_by_group``:
  AdamW's moments of the table leaves, or the state of the branch that optimizes the tables
  (Ember's or Adafactor's, step count included). Counts shared by the whole model (AdamW's)
  are in ``model`` only.

  Args:
    name: ``"adamw"``, ``"ember"`` or ``"adafactor"`` (see :func:`make_optimizer`).
    params: the parameters (arrays or ``jax.ShapeDtypeStruct``s; a dict or an ``nnx.State``).
    labels: ``"ember"``/``"adamw"`` per parameter.
    param_shardings: if given (``NamedSharding`` per parameter), the bytes are one device's,
      with the state laid out by ``ember_optax.state_shardings``.

  Returns:
    ``StateBytes(tables, model)``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> params = {'embed': jax.ShapeDtypeStruct((1000, 64), jnp.float32),
    ...           'w': jax.ShapeDtypeStruct((64, 64), jnp.float32)}
    >>> labels = {'embed': 'ember', 'w': 'adamw'}
    >>> optimizer_state_bytes('ember', params, labels)
    StateBytes(tables=4264, model=37040)
  """
  state = jax.eval_shape(make_optimizer(name, labels).init, params)
  if param_shardings is not None:
    state = shard_shapes(state, ember_optax.state_shardings(state, param_shardings))
  table_label = ADAFACTOR if name == ADAFACTOR else TABLE
  return StateBytes(
    state_bytes_by_group(state, _setup_labels(name, labels))[table_label], tree_bytes(state)
  )


def shard_shapes(tree: Any, shardings: Any) -> Any:
  """One device's shards of ``tree``'s arrays, as ``jax.ShapeDtypeStruct``s."""
  return jax.tree.map(
    lambda leaf, sharding: jax.ShapeDtypeStruct(sharding.shard_shape(leaf.shape), leaf.dtype),
    tree, shardings,
  )


# -- The compiled train step -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StepMemory:
  """XLA's memory analysis of a compiled step, in bytes (per device when sharded).

  Attributes:
    argument: inputs: parameters, optimizer state, token batch.
    output: results: new parameters, new state, the loss.
    alias: outputs written into donated inputs (counted in both of the above).
    temp: scratch memory: gradients, activations kept for the backward pass, the optimizer's
      intermediates. XLA:CPU's buffer assignment.
  """

  argument: int
  output: int
  alias: int
  temp: int

  @property
  def total(self) -> int:
    """Peak memory of one step: inputs, outputs not written in place, scratch."""
    return self.argument + self.output - self.alias + self.temp

  @classmethod
  def of(cls, compiled: jax.stages.Compiled) -> StepMemory:
    analysis = compiled.memory_analysis()
    return cls(
      argument=int(analysis.argument_size_in_bytes),
      output=int(analysis.output_size_in_bytes),
      alias=int(analysis.alias_size_in_bytes),
      temp=int(analysis.temp_size_in_bytes),
    )


def train_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation) -> Callable:
  """A pure train step ``(params, opt_state, tokens) -> (params, opt_state, loss)``.

  ``tokens`` is ``(batch, length + 1)``: inputs and next-token targets. The loss is the mean
  cross-entropy over targets that are not padding (negative ids), computed in float32 from the
  model's logits.
  """

  def step(params, opt_state, tokens):
    def loss_fn(params):
      logits = nnx.merge(graphdef, params)(tokens[:, :-1])
      targets = tokens[:, 1:]
      losses = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), jnp.maximum(targets, 0)
      )
      # The mask also keeps the loss's gradient from being a constant, which XLA would try
      # (slowly, at compile time) to fold through the scatter of the label lookup's gradient.
      mask = targets >= 0
      return jnp.sum(jnp.where(mask, losses, 0.0)) / jnp.maximum(jnp.sum(mask), 1)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def fsdp_shardings(params: Any, mesh: Mesh, stacked: Callable[[Any], bool]) -> Any:
  """A fully sharded layout: each parameter split along its largest evenly divisible axis.

  Stacked layer parameters (``stacked(key_path)`` true) keep their leading layer axis whole, since
  the scan slices it; a parameter with no axis divisible by the device count is replicated.
  """
  n = mesh.size

  def sharding(path, leaf) -> NamedSharding:
    first = 1 if stacked(path) else 0
    axes = [a for a in range(first, leaf.ndim) if leaf.shape[a] % n == 0]
    spec = [None] * leaf.ndim
    if axes:
      spec[max(axes, key=lambda a: leaf.shape[a])] = FSDP_AXIS
    return NamedSharding(mesh, PartitionSpec(*spec))

  return jax.tree_util.tree_map_with_path(sharding, params)


# XLA options of every compile. The backend (LLVM) optimization level acts after buffer
# assignment, so the memory analysis does not depend on it (tested); level 0 halves compile time.
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


@dataclasses.dataclass(frozen=True)
class StepBuilder:
  """Compiles one model's train step under one optimizer for any batch size.

  Attributes:
    graphdef: the model's graph (``nnx.split``).
    params: the parameters as a pure dict (abstract or concrete).
    labels: ``"ember"``/``"adamw"`` per parameter.
    optimizer: setup name (see :func:`make_optimizer`).
    seq_len: tokens per sequence.
    mesh: a one-axis device mesh for the FSDP layout, or ``None`` for one device.
    stacked: whether a parameter (by key path) is stacked over layers (scanned).
  """

  graphdef: nnx.GraphDef
  params: Any
  labels: Any
  optimizer: str
  seq_len: int
  mesh: Mesh | None = None
  stacked: Callable[[Any], bool] = lambda path: False

  @functools.cached_property
  def param_shardings(self) -> Any | None:
    """The parameters' FSDP layout, or ``None`` on one device."""
    if self.mesh is None:
      return None
    return fsdp_shardings(self.params, self.mesh, self.stacked)

  @functools.cached_property
  def _jitted(self) -> tuple[Any, Any]:
    optimizer = make_optimizer(self.optimizer, self.labels)
    state = jax.eval_shape(optimizer.init, self.params)
    jit_kwargs = {}
    if self.mesh is not None:
      state_shardings = ember_optax.state_shardings(state, self.param_shardings)
      batch_sharding = NamedSharding(self.mesh, PartitionSpec(FSDP_AXIS))
      replicated = NamedSharding(self.mesh, PartitionSpec())
      jit_kwargs = dict(
        in_shardings=(self.param_shardings, state_shardings, batch_sharding),
        out_shardings=(self.param_shardings, state_shardings, replicated),
      )
    # keep_unused: an input the step never reads (Adafactor's placeholder for a factored
    # second moment) still sits in memory between steps, so it counts among the arguments.
    step = jax.jit(train_step(self.graphdef, optimizer), donate_argnums=(0, 1), keep_unused=True,
                   **jit_kwargs)
    return step, state

  def lower(self, batch: int) -> jax.stages.Lowered:
    """The step lowered for ``batch`` sequences per device."""
    step, state = self._jitted
    devices = 1 if self.mesh is None else self.mesh.size
    tokens = jax.ShapeDtypeStruct((batch * devices, self.seq_len + 1), jnp.int32)
    return step.lower(self.params, state, tokens)

  def compile(self, batch: int, options: dict | None = None) -> jax.stages.Compiled:
    """The compiled step for ``batch`` sequences per device (``COMPILER_OPTIONS`` by default)."""
    options = COMPILER_OPTIONS if options is None else options
    return self.lower(batch).compile(compiler_options=options)

  def memory(self, batch: int) -> StepMemory:
    """The step's memory at ``batch`` sequences per device."""
    return StepMemory.of(self.compile(batch))


def largest_fitting_batch(memory_at: Callable[[int], int], budget: int,
                          known: dict[int, int]) -> int:
  """The largest batch whose step needs at most ``budget`` bytes; 0 if batch 1 does not fit.

  A step's memory is close to affine in the batch, so each guess is the batch at which a line
  through measured points crosses the budget (see ``_affine_guess``), and a guess that fits is
  followed by the next batch, so that an exact line ends the search at once: the answer is always
  confirmed by measuring it (fits) and the next batch (does not). Bisection takes over where a
  guess does not narrow the bracket.

  Args:
    memory_at: bytes of the step at a batch (a compile); results are added to ``known``.
    budget: bytes available.
    known: measured ``{batch: bytes}``, reused and extended.

  Returns:
    The largest batch ``b <= MAX_BATCH`` with ``memory_at(b) <= budget``, assuming memory grows
    with the batch.
  """

  def measure(batch: int) -> int:
    if batch not in known:
      known[batch] = memory_at(batch)
    return known[batch]

  if measure(1) > budget:
    return 0
  while True:
    fits = [b for b, m in known.items() if m <= budget]
    too_big = [b for b, m in known.items() if m > budget]
    low = max(fits)
    high = min(too_big) if too_big else MAX_BATCH + 1
    if high - low <= 1:
      return low
    guess = _affine_guess(known, budget, low, min(too_big) if too_big else None)
    if not low < guess < high:
      guess = (low + high) // 2 if too_big else min(2 * low, MAX_BATCH)
    # Every batch strictly inside the bracket is unmeasured, so each pass narrows it.
    if measure(guess) <= budget and guess + 1 < high:
      measure(guess + 1)


def _affine_guess(known: dict[int, int], budget: int, low: int, high: int | None) -> int:
  """Where a line through measured points reaches ``budget`` (-1 if none rises).

  Inside a bracket the line joins its ends; above every measured batch it joins the smallest
  and the largest batch that fit, the widest baseline, which steps in the memory do not mislead.
  """
  first = high if high is not None else min(known)
  if first == low:
    return -1
  (b1, m1), (b2, m2) = sorted([(first, known[first]), (low, known[low])])
  if m2 <= m1:
    return -1
  return math.floor(b1 + (budget - m1) * (b2 - b1) / (m2 - m1))


def _log(line: str) -> None:
  print(line, file=sys.stderr, flush=True)


# -- The analysis ----------------------------------------------------------------------------


@dataclasses.dataclass
class Measured:
  """One model, precision and optimizer on one layout.

  Attributes:
    shape, precision, optimizer: what was compiled.
    devices: devices of the layout (1, or the FSDP mesh's size; bytes are then per device).
    seq_len: tokens per sequence.
    batch: sequences per device of the reported step.
    n_params: number of parameters.
    params: parameter bytes (one device's share when sharded).
    state: optimizer-state bytes (one device's share when sharded).
    step: memory of the step at ``batch``.
    fits: largest sequences per device that fit, per budget in GiB (0: batch 1 does not fit).
    steps_by_batch: every compiled batch's memory (the reported one and the batch search's).
    compile_seconds: time spent lowering and compiling.
  """

  shape: published.DecoderShape
  precision: str
  optimizer: str
  devices: int
  seq_len: int
  batch: int
  n_params: int
  params: int
  state: StateBytes
  step: StepMemory
  fits: dict[float, int]
  steps_by_batch: dict[int, StepMemory]
  compile_seconds: float

  @property
  def model(self) -> str:
    return self.shape.name

  def to_json(self) -> dict:
    out = dataclasses.asdict(self)
    out["state"] = self.state._asdict()
    out["step"]["total"] = self.step.total
    out["steps_by_batch"] = {str(b): dataclasses.asdict(m) for b, m in self.steps_by_batch.items()}
    out["fits"] = {f"{k:g}": v for k, v in self.fits.items()}
    return out

  @classmethod
  def from_json(cls, data: dict) -> Measured:
    data = dict(data)
    data["shape"] = published.DecoderShape(**data["shape"])
    data["state"] = StateBytes(**data["state"])
    data["step"] = StepMemory(**{k: v for k, v in data["step"].items() if k != "total"})
    data["fits"] = {float(k): v for k, v in data["fits"].items()}
    data["steps_by_batch"] = {int(b): StepMemory(**m) for b, m in data["steps_by_batch"].items()}
    return cls(**data)


def analyze(
  shape: published.DecoderShape,
  precision: str,
  optimizers: Sequence[str],
  *,
  batch: int,
  seq_len: int,
  budgets_gib: Sequence[float],
  devices: int = 1,
  remat: bool = True,
  log: Callable[[str], None] | None = None,
) -> list[Measured]:
  """Compiles one model's step under each optimizer; state, step memory, budgets.

  With ``devices > 1`` the step is laid out FSDP-style over all of ``jax.devices()`` (which must
  number ``devices``), and every byte count is per device.
  """
  mesh = activation_sharding = None
  if devices > 1:
    if jax.device_count() != devices:
      raise RuntimeError(f"asked for {devices} devices, JAX has {jax.device_count()}")
    # Auto axes: XLA's sharding propagation lays out everything not constrained.
    mesh = jax.make_mesh((devices,), (FSDP_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))
    activation_sharding = NamedSharding(mesh, PartitionSpec(FSDP_AXIS))
  graphdef, params = published.abstract_model(
    shape, param_dtype=PRECISIONS[precision], remat=remat,
    activation_sharding=activation_sharding,
  )
  labels = published.table_labels(params, shape)
  n_params = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))
  results = []
  for name in optimizers:
    builder = StepBuilder(graphdef, params, labels, name, seq_len, mesh, published.is_stacked)
    start = time.perf_counter()
    steps, fits = _measure_step(builder, batch, budgets_gib)
    seconds = time.perf_counter() - start
    shards = params if mesh is None else shard_shapes(params, builder.param_shardings)
    results.append(Measured(
      shape, precision, name, devices, seq_len, batch, n_params, tree_bytes(shards),
      optimizer_state_bytes(name, params, labels, builder.param_shardings), steps[batch], fits,
      dict(sorted(steps.items())), seconds,
    ))
    (log or _log)(
      f"  {shape.name:>13} {precision:>8} {name:>9} on {devices} device(s): step "
      f"{format_bytes(steps[batch].total)} at batch {batch}; {len(steps)} compiles, {seconds:.0f} s"
    )
  return results


def _measure_step(builder: StepBuilder, batch: int, budgets_gib: Sequence[float]
                  ) -> tuple[dict[int, StepMemory], dict[float, int]]:
  """The step's memory at every batch compiled, and the largest fitting batch per budget."""
  steps = {batch: builder.memory(batch)}

  def total_at(b: int) -> int:
    steps[b] = builder.memory(b)
    return steps[b].total

  known = {batch: steps[batch].total}
  fits = {budget: largest_fitting_batch(total_at, int(budget * GIB), known)
          for budget in budgets_gib}
  return steps, fits


def largest_table_bytes(shape: published.DecoderShape, precision: str, devices: int = 1) -> int:
  """Bytes of the model's largest token table, per device when FSDP splits it over ``devices``.

  Every table of the published shapes has an axis divisible by 8, so FSDP splits it evenly.
  """
  size = max(math.prod(table) for table in shape.table_shapes())
  return size * jnp.dtype(PRECISIONS[precision]).itemsize // devices


@dataclasses.dataclass(frozen=True)
class TempCheck:
  """Ember's extra scratch over AdamW's, at every batch compiled under both."""

  model: str
  precision: str
  devices: int
  worst_batch: int
  extra_temp: int
  largest_table: int

  @property
  def share(self) -> float:
    return self.extra_temp / self.largest_table

  @property
  def ok(self) -> bool:
    return self.share <= TEMP_ALLOWANCE


def temp_checks(measured: Sequence[Measured]) -> list[TempCheck]:
  """Per model, precision and layout: Ember's temporaries minus AdamW's, at the worst batch
  compiled under both (the reported one and those the batch searches share)."""
  by_key = {(m.shape, m.precision, m.devices, m.optimizer): m for m in measured}
  checks = []
  for (shape, precision, devices, name), ember in by_key.items():
    adamw = by_key.get((shape, precision, devices, "adamw"))
    if name != "ember" or adamw is None:
      continue
    extras = {b: ember.steps_by_batch[b].temp - adamw.steps_by_batch[b].temp
              for b in set(ember.steps_by_batch) & set(adamw.steps_by_batch)}
    worst = max(extras, key=extras.get)
    checks.append(TempCheck(shape.name, precision, devices, worst, extras[worst],
                            largest_table_bytes(shape, precision, devices)))
  return checks


# -- Reality check: the small GPT, run ---------------------------------------------------------


def _rss_bytes(field: str) -> int:
  """A ``VmRSS``/``VmHWM`` line of ``/proc/self/status``, in bytes."""
  for line in Path("/proc/self/status").read_text().splitlines():
    if line.startswith(field + ":"):
      return int(line.split()[1]) * 1024
  raise RuntimeError(f"no {field} in /proc/self/status")


def _wait_for_steady_rss(interval: float = 0.05, timeout: float = 5.0) -> None:
  """Returns once the resident set size stops changing (or after ``timeout`` seconds)."""
  deadline = time.perf_counter() + timeout
  last = _rss_bytes("VmRSS")
  while time.perf_counter() < deadline:
    time.sleep(interval)
    now = _rss_bytes("VmRSS")
    if now == last:
      return
    last = now


def real_step_memory(optimizer: str, preset: str = "small", repeats: int = 3) -> dict:
  """Runs the ``models.gpt`` preset's train step and measures the process's resident memory.

  Meant for a fresh process started by :func:`reality_check`, which fixes glibc's mmap threshold
  so that freed buffers go back to the system and every step starts from the same resident set.
  Everything is compiled first. Then the parameters, optimizer state and batch are created
  (their resident growth is set against the analysis's argument bytes); then, ``repeats`` times,
  the kernel's peak-RSS mark is reset (``/proc/self/clear_refs``) and the step's peak growth over
  the resident memory before it is read (set against temporaries plus the outputs not written in
  place). The first step also pays for one-time runtime set-up, so the later ones are the
  measurement.

  Returns:
    ``{"estimate": StepMemory fields, "arguments_rss": bytes, "step_rss": [bytes per step]}``.
  """
  from models import gpt  # The reference GPT of the main job; only the reality check needs it.
  from models.presets import PRESETS

  settings = PRESETS[preset]
  config = dataclasses.replace(settings.model, vocab_size=settings.vocab_size)

  def new_params():
    return nnx.split(gpt.GPT(config, rngs=nnx.Rngs(0)), nnx.Param)[1].to_pure_dict()

  graphdef = nnx.split(nnx.eval_shape(lambda: gpt.GPT(config, rngs=nnx.Rngs(0))), nnx.Param)[0]
  abstract_params = jax.eval_shape(new_params)
  labels = gpt.table_labels(abstract_params, config)
  step = StepBuilder(graphdef, abstract_params, labels, optimizer, settings.seq_len).compile(
    settings.batch_size
  )
  estimate = StepMemory.of(step)
  make_params = jax.jit(new_params).lower().compile()
  init = jax.jit(make_optimizer(optimizer, labels).init).lower(abstract_params).compile()
  shape = (settings.batch_size, settings.seq_len + 1)
  make_tokens = jax.jit(
    lambda: jax.random.randint(jax.random.key(0), shape, 0, config.vocab_size)
  ).lower().compile()

  before = _rss_bytes("VmRSS")
  params = make_params()
  state = init(params)
  tokens = make_tokens()
  jax.block_until_ready((params, state, tokens))
  arguments_rss = _rss_bytes("VmRSS") - before

  def peak_growth(function: Callable, *args) -> tuple[int, Any]:
    _wait_for_steady_rss()  # The runtime frees the last call's buffers after returning.
    Path("/proc/self/clear_refs").write_text("5")  # Resets VmHWM to the current RSS.
    before = _rss_bytes("VmRSS")
    result = jax.block_until_ready(function(*args))
    return _rss_bytes("VmHWM") - before, result

  step_rss = []
  for _ in range(repeats):
    growth, (params, state, loss) = peak_growth(step, params, state, tokens)
    step_rss.append(growth)

  # The LM head's matmul alone, summed: XLA's analysis gives it no temporary, yet the matmul
  # library that XLA:CPU calls works in memory of its own.
  hidden = jnp.ones((settings.batch_size * settings.seq_len, config.d_model))
  head = jnp.ones((config.d_model, config.vocab_size))
  probe = jax.jit(lambda h, w: jnp.sum(h @ w)).lower(hidden, head).compile()
  probe_rss = [peak_growth(probe, hidden, head)[0] for _ in range(2)][-1]
  return {
    "estimate": dataclasses.asdict(estimate),
    "arguments_rss": arguments_rss,
    "step_rss": step_rss,
    "loss": float(loss),
    "matmul_probe": {"shape": [list(hidden.shape), list(head.shape)],
                     "temp": StepMemory.of(probe).temp, "rss": probe_rss},
  }


def reality_child(optimizer: str, preset: str = "small") -> _Child:
  """Starts :func:`real_step_memory` in a fresh process; ``.result()`` gives its result."""
  # A fixed threshold also turns off glibc's dynamic one, which would keep freed buffers of up
  # to 32 MiB in the heap and hide them from the next step's peak.
  env = {"MALLOC_MMAP_THRESHOLD_": str(1 << 16), "MALLOC_TRIM_THRESHOLD_": str(1 << 16)}
  return _Child("real_step_memory", {"optimizer": optimizer, "preset": preset}, env)


def reality_check(optimizers: Sequence[str], preset: str = "small") -> dict[str, dict]:
  """:func:`real_step_memory` for each optimizer, each in a fresh process, one at a time."""
  return {name: reality_child(name, preset).result() for name in optimizers}


# -- Subprocesses ------------------------------------------------------------------------------


class _Child:
  """A fresh Python process calling one function of this module; its JSON result on stdout.

  Its stderr (progress lines) is echoed as it comes, so that a long run shows where it is; both
  pipes are drained by threads, so that a child never blocks on a full pipe.
  """

  def __init__(self, function: str, kwargs: dict, env: dict[str, str] | None = None,
               prefix: str = ""):
    self.function = function
    self.process = subprocess.Popen(
      [sys.executable, "-c", "from models.bench_memory import _child_main; _child_main()"],
      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env={**os.environ, **(env or {})},
    )
    self.process.stdin.write(json.dumps({"function": function, "kwargs": kwargs}))
    self.process.stdin.close()
    self.last_error_line = "see its traceback above"
    self.stdout: list[str] = []
    self.readers = [
      threading.Thread(target=self._echo, args=(prefix,), daemon=True),
      threading.Thread(target=lambda: self.stdout.append(self.process.stdout.read()),
                       daemon=True),
    ]
    for reader in self.readers:
      reader.start()

  def _echo(self, prefix: str) -> None:
    for line in self.process.stderr:
      if re.match(r"^[\w.]+(Error|Exception)\b", line):
        self.last_error_line = line.strip()
      sys.stderr.write(prefix + line)

  def done(self) -> bool:
    return self.process.poll() is not None

  def result(self) -> Any:
    self.process.wait()
    for reader in self.readers:
      reader.join()
    if self.process.returncode:
      raise RuntimeError(f"{self.function} failed in its subprocess: {self.last_error_line}")
    return json.loads("".join(self.stdout).strip().splitlines()[-1])


def _child_main() -> None:
  """Entry point of a :class:`_Child` process."""
  request = json.loads(sys.stdin.read())
  functions = {"real_step_memory": real_step_memory, "analyze_all": _analyze_all_json}
  result = functions[request["function"]](**request["kwargs"])
  print(json.dumps(result))


def _analyze_all_json(shapes: Sequence[dict], precisions: Sequence[str], **kwargs) -> list[dict]:
  return [m.to_json() for shape in shapes for precision in precisions
          for m in analyze(published.DecoderShape(**shape), precision, **kwargs)]


def analysis_child(shape: published.DecoderShape, precisions: Sequence[str], *, devices: int,
                   **kwargs) -> _Child:
  """Starts :func:`analyze` of one shape in its own process, on ``devices`` CPU devices (JAX
  must see the device count when it starts); ``.result()`` gives its ``Measured`` as JSON."""
  env = {"JAX_PLATFORMS": "cpu"}
  if devices > 1:
    flags = os.environ.get("XLA_FLAGS", "")
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
  return _Child(
    "analyze_all",
    {"shapes": [dataclasses.asdict(shape)], "precisions": list(precisions), "devices": devices,
     **kwargs},
    env=env, prefix="" if devices == 1 else f"[{devices} devices] ",
  )


def run_children(starts: Sequence[Callable[[], _Child]], jobs: int) -> list[Any]:
  """Runs the children that ``starts`` start, at most ``jobs`` at a time; their results in order."""
  results: list[Any] = [None] * len(starts)
  pending = list(enumerate(starts))
  running: list[tuple[int, _Child]] = []
  while pending or running:
    while pending and len(running) < jobs:
      index, start = pending.pop(0)
      running.append((index, start()))
    done = [(index, child) for index, child in running if child.done()]
    for index, child in done:
      results[index] = child.result()
      running.remove((index, child))
    if not done:
      time.sleep(0.2)
  return results


# -- Report ----------------------------------------------------------------------------------


def _share(part: float, whole: float) -> str:
  return f"{100 * part / whole:.1f}%"


def _grouped(measured: Sequence[Measured]) -> dict[tuple[str, str], dict[str, Measured]]:
  groups: dict[tuple[str, str], dict[str, Measured]] = {}
  for m in measured:
    groups.setdefault((m.model, m.precision), {})[m.optimizer] = m
  return groups


def summary_table(measured: Sequence[Measured]) -> str:
  """Per model and precision: tables' share, state and step totals, what Ember saves."""
  rows = []
  for (_, precision), by_name in _grouped(measured).items():
    adamw, ember = by_name.get("adamw"), by_name.get("ember")
    if adamw is None or ember is None:
      continue
    shape = adamw.shape
    saved = adamw.step.total - ember.step.total
    rows.append((
      shape.title, f"{shape.vocab_size:,} × {shape.d_model:,}{' (tied)' if shape.tied else ''}",
      _share(shape.table_params(), adamw.n_params), precision,
      f"{format_bytes(adamw.state.tables)} → {format_bytes(ember.state.tables)}",
      f"{format_bytes(adamw.state.model)} → {format_bytes(ember.state.model)}",
      " / ".join(format_bytes(by_name[n].step.total) for n in OPTIMIZERS if n in by_name),
      f"{format_bytes(saved)} ({_share(saved, adamw.step.total)})",
    ))
  return markdown_table(
    ("model", "tables V × D", "tables' share of params", "precision",
     "opt. state, tables: AdamW → Ember", "opt. state, model: AdamW → Ember",
     "step total: " + " / ".join(n for n in OPTIMIZERS), "Ember saves (share of AdamW's step)"),
    rows,
  )


def detail_table(measured: Sequence[Measured]) -> str:
  """Every compiled configuration at the reported batch."""
  rows = []
  for (model, precision), by_name in _grouped(measured).items():
    adamw = by_name.get("adamw")
    for name, m in by_name.items():
      saved = "" if adamw is None or name == "adamw" else (
        f"{format_bytes(adamw.step.total - m.step.total)} "
        f"({_share(adamw.step.total - m.step.total, adamw.step.total)})")
      rows.append((
        model, precision, name, format_bytes(m.state.tables), format_bytes(m.state.model),
        format_bytes(m.step.argument), format_bytes(m.step.output), format_bytes(m.step.alias),
        format_bytes(m.step.temp), format_bytes(m.step.total), saved,
      ))
  return markdown_table(
    ("model", "precision", "optimizer", "opt. state, tables", "opt. state, model", "arguments",
     "outputs", "aliased (donated)", "temporaries (XLA:CPU)", "step total", "saved vs AdamW"),
    rows,
  )


def budget_table(measured: Sequence[Measured]) -> str:
  """Largest batch per budget: sequences per device and tokens per step."""
  budgets = sorted({b for m in measured for b in m.fits})

  def cell(m: Measured, budget: float) -> str:
    fit = m.fits[budget]
    if not fit:
      return "batch 1 does not fit"
    tokens = fit * m.devices * m.seq_len
    per_device = " per device" if m.devices > 1 else ""
    return f"{fit} seq{per_device} = {tokens:,} tokens"

  rows = [(m.model, m.precision, m.optimizer, *(cell(m, b) for b in budgets))
          for m in measured if m.fits]
  unit = "per device" if any(m.devices > 1 for m in measured) else ""
  return markdown_table(
    ("model", "precision", "optimizer", *(f"{b:g} GiB {unit}".strip() for b in budgets)), rows
  )


def temp_check_table(checks: Sequence[TempCheck]) -> str:
  rows = [(c.model, c.precision, str(c.devices), str(c.worst_batch), format_bytes(c.extra_temp)
           if c.extra_temp >= 0 else "-" + format_bytes(-c.extra_temp),
           format_bytes(c.largest_table), f"{100 * c.share:.2f}%", "yes" if c.ok else "**no**")
          for c in checks]
  return markdown_table(
    ("model", "precision", "devices", "worst batch", "Ember temp − AdamW temp",
     "largest table (per device)", "share of table", f"≤ {TEMP_ALLOWANCE:.0%}"), rows,
  )


def reality_table(reality: dict[str, dict]) -> str:
  rows = []
  for name, r in reality.items():
    e = StepMemory(**r["estimate"])
    step_estimate = e.temp + e.output - e.alias
    later = max(r["step_rss"][1:] or r["step_rss"])
    rows.append((
      name, format_bytes(e.argument), format_bytes(r["arguments_rss"]),
      format_bytes(step_estimate), format_bytes(r["step_rss"][0]), format_bytes(later),
      f"{format_bytes(later - step_estimate)} ({_share(later - step_estimate, step_estimate)})",
    ))
  return markdown_table(
    ("optimizer", "arguments: analysis", "arguments: RSS growth",
     "step: temporaries + new outputs (analysis)", "step 1: peak RSS growth",
     "later steps: peak RSS growth (max)", "later steps − analysis"), rows,
  )


def bar_plot(shape: published.DecoderShape, layouts: dict[str, Sequence[Measured]],
             path: Path) -> None:
  """One PNG per model: stacked bars of the step's memory per precision and optimizer, a panel
  per layout (one device; per device of the FSDP layout), and the searched budgets as lines."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  layouts = {title: [m for m in ms if m.shape == shape] for title, ms in layouts.items()}
  layouts = {title: ms for title, ms in layouts.items() if ms}
  fig, axes = plt.subplots(1, len(layouts), figsize=(6.5 * len(layouts), 4.6), squeeze=False)
  parts = ("parameters", "opt. state: tables", "opt. state: rest", "temporaries (XLA:CPU)",
           "batch, loss")
  colors = ("tab:gray", "tab:red", "tab:orange", "tab:blue", "black")
  for ax, (title, ms) in zip(axes[0], layouts.items(), strict=True):
    labels, stacks = [], []
    for m in ms:
      rest = m.state.model - m.state.tables
      other = m.step.total - m.params - m.state.model - m.step.temp
      labels.append(f"{m.optimizer}\n{m.precision.replace('bfloat16', 'bf16')}")
      stacks.append((m.params, m.state.tables, rest, m.step.temp, max(other, 0)))
    bottom = [0.0] * len(stacks)
    for index, (part, color) in enumerate(zip(parts, colors, strict=True)):
      heights = [stack[index] / GIB for stack in stacks]
      ax.bar(labels, heights, bottom=bottom, color=color, label=part)
      bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    for x, top in enumerate(bottom):
      ax.text(x, top, f"{top:.1f}", ha="center", va="bottom", fontsize=8)
    top = 1.1 * max(bottom)
    for budget in sorted({b for m in ms for b in m.fits}):
      if budget * GIB < top * GIB:
        ax.axhline(budget, color="black", linestyle="--", linewidth=0.8)
        ax.text(len(stacks) - 0.5, budget, f"{budget:g} GiB", ha="right", va="bottom",
                fontsize=7)
    ax.set_ylim(0, top)
    ax.set_ylabel("GiB" + (" per device" if ms[0].devices > 1 else ""))
    ax.set_title(f"{title}: batch {ms[0].batch} × {ms[0].seq_len} tokens per device",
                 fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="y", alpha=0.3)
  handles, names = axes[0][0].get_legend_handles_labels()
  fig.legend(handles, names, loc="lower center", ncol=len(parts), fontsize=8, frameon=False)
  fig.suptitle(f"Train-step memory, {shape.title}", fontsize=10)
  fig.tight_layout(rect=(0, 0.06, 1, 1))
  fig.savefig(path, dpi=110)
  plt.close(fig)


def report(results: dict) -> str:
  """The whole run as Markdown."""
  single = [Measured.from_json(m) for m in results["single"]]
  sharded = [Measured.from_json(m) for m in results["sharded"]]
  cfg = results["config"]
  lines = [
    "# Train-step memory at published model shapes",
    "",
    f"`{results['command']}`: {results['date']}, jax {results['jax']}, {results['machine']}, "
    f"{results['wall_seconds'] / 60:.1f} min wall, {results['cpu_seconds'] / 60:.1f} CPU-minutes.",
    f"Batch {cfg['batch']} sequences of {cfg['seq_len']} tokens per device, "
    f"{'layers rematerialized' if cfg['remat'] else 'no rematerialization'}, parameters and "
    "optimizer state donated. State, arguments, outputs and aliased bytes are exact on every "
    "backend; temporaries are XLA:CPU's.",
    "",
    "## One device",
    "",
    summary_table(single),
    "",
    detail_table(single),
    "",
    "### Largest batch that fits",
    "",
    budget_table(single),
  ]
  if sharded:
    lines += [
      "",
      f"## {sharded[0].devices} devices, FSDP layout (bytes per device)",
      "",
      detail_table(sharded),
    ]
  if any(m.fits for m in sharded):
    lines += ["", "### Largest batch that fits (per device)", "", budget_table(sharded)]
  lines += [
    "",
    "## Ember's temporaries against AdamW's",
    "",
    temp_check_table([TempCheck(**c) for c in results["temp_checks"]]),
  ]
  if results.get("reality"):
    probe = next(iter(results["reality"].values()))["matmul_probe"]
    lines += [
      "",
      f"## Analysis against a real run ({cfg['reality_preset']} GPT of `models.gpt`, one device)",
      "",
      reality_table(results["reality"]),
      "",
      f"The LM head's matmul alone, `sum(h @ w)` with h {probe['shape'][0]} and w "
      f"{probe['shape'][1]}: {format_bytes(probe['temp'])} of temporaries in the analysis, "
      f"{format_bytes(probe['rss'])} of peak RSS growth.",
    ]
  return "\n".join(lines) + "\n"


# -- Command line ----------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
  """Errors are one line on stderr."""

  def error(self, message: str):
    self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(
    prog="python -m models.bench_memory",
    description="Memory of a whole train step at published model shapes under AdamW, Ember and "
    "Adafactor, from XLA's memory analysis of the compiled step (compile only).",
    formatter_class=argparse.ArgumentDefaultsHelpFormatter,
  )
  parser.add_argument("--models", nargs="+", default=list(published.SHAPES),
                      choices=list(published.SHAPES), help="published shapes to analyze")
  parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=OPTIMIZERS,
                      help="optimizer setups (the body always gets AdamW)")
  parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS),
                      choices=list(PRECISIONS),
                      help="parameter dtype; optimizer statistics are float32 in both")
  parser.add_argument("--batch", type=int, default=8,
                      help="sequences per device of the reported step")
  parser.add_argument("--seq-len", type=int, default=1024, help="tokens per sequence")
  parser.add_argument("--budgets", nargs="+", type=float, default=list(DEFAULT_BUDGETS_GIB),
                      help="memory budgets (GiB per device) for the largest-batch search")
  parser.add_argument("--devices", type=int, default=8,
                      help="virtual CPU devices of the FSDP analysis, run in a subprocess "
                      "(0 or 1: skip it)")
  parser.add_argument("--fsdp-budgets", nargs="*", type=float, default=[80],
                      help="memory budgets (GiB per device) searched in the FSDP analysis")
  parser.add_argument("--jobs", type=int, default=2,
                      help="analyses run at once, each in its own process")
  parser.add_argument("--remat", action=argparse.BooleanOptionalAction, default=True,
                      help="recompute each layer's activations in the backward pass")
  parser.add_argument("--reality-check", action=argparse.BooleanOptionalAction, default=True,
                      help="also run the small GPT's step and compare its resident memory with "
                      "the analysis (one device, Linux)")
  parser.add_argument("--out", type=Path, default=None,
                      help="folder for bench_memory.json, bench_memory.md and one PNG per model")
  return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  if args.batch < 1:
    parser.error(f"--batch must be at least 1, got {args.batch}")
  if args.seq_len < 1:
    parser.error(f"--seq-len must be at least 1, got {args.seq_len}")
  for model in args.models:
    positions = published.SHAPES[model].max_positions
    if positions and args.seq_len > positions:
      parser.error(f"--seq-len {args.seq_len} is longer than {model}'s {positions} learned "
                   "positions; pass --seq-len at most that, or leave that model out (--models)")
  for flag, budgets in (("--budgets", args.budgets), ("--fsdp-budgets", args.fsdp_budgets)):
    if any(b <= 0 for b in budgets):
      parser.error(f"{flag} must be positive GiB, got {budgets}")
  if args.devices < 0:
    parser.error(f"--devices must be 0 or more, got {args.devices}")
  if args.jobs < 1:
    parser.error(f"--jobs must be at least 1, got {args.jobs}")
  if args.reality_check and not Path("/proc/self/clear_refs").exists():
    parser.error("--reality-check reads /proc/self (Linux); pass --no-reality-check")


def main(argv: Sequence[str] | None = None) -> dict:
  parser = build_parser()
  args = parser.parse_args(argv)
  _check_args(parser, args)
  start = time.perf_counter()
  options = dict(optimizers=args.optimizers, batch=args.batch, seq_len=args.seq_len,
                 remat=args.remat)
  shapes = [published.SHAPES[name] for name in args.models]
  layouts = [1] + ([args.devices] if args.devices > 1 else [])
  starts = []
  for devices in reversed(layouts):  # The sharded analyses take longest: first.
    for shape in shapes:
      for precision in args.precisions:
        starts.append(functools.partial(
          analysis_child, shape, [precision], devices=devices,
          budgets_gib=args.budgets if devices == 1 else args.fsdp_budgets, **options))
  if args.reality_check:
    starts += [functools.partial(reality_child, name) for name in args.optimizers]
  results = run_children(starts, args.jobs)
  n_analyses = len(starts) - (len(args.optimizers) if args.reality_check else 0)
  measured = [Measured.from_json(m) for r in results[:n_analyses] for m in r]
  single = [m for m in measured if m.devices == 1]
  sharded = [m for m in measured if m.devices > 1]
  order = {(s.name, p, o): i for i, (s, p, o) in enumerate(
    (s, p, o) for s in shapes for p in args.precisions for o in args.optimizers)}
  single.sort(key=lambda m: order[m.model, m.precision, m.optimizer])
  sharded.sort(key=lambda m: order[m.model, m.precision, m.optimizer])
  reality = dict(zip(args.optimizers, results[n_analyses:], strict=True)) if args.reality_check \
    else {}
  checks = temp_checks(single + sharded)
  children = resource.getrusage(resource.RUSAGE_CHILDREN)
  own = resource.getrusage(resource.RUSAGE_SELF)
  results = {
    "command": " ".join(["python -m models.bench_memory", *(argv if argv is not None
                                                              else sys.argv[1:])]),
    "date": time.strftime("%Y-%m-%d"),
    "jax": jax.__version__,
    "machine": f"{os.cpu_count()}-core CPU",
    "config": {**options, "budgets_gib": args.budgets, "devices": args.devices,
               "fsdp_budgets_gib": args.fsdp_budgets, "jobs": args.jobs,
               "reality_preset": "small"},
    "single": [m.to_json() for m in single],
    "sharded": [m.to_json() for m in sharded],
    "temp_checks": [dataclasses.asdict(c) for c in checks],
    "reality": reality,
    "wall_seconds": time.perf_counter() - start,
    "cpu_seconds": sum(u.ru_utime + u.ru_stime for u in (children, own)),
  }
  text = report(results)
  print(text)
  if args.out:
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_memory.json").write_text(json.dumps(results, indent=1))
    (args.out / "bench_memory.md").write_text(text)
    panels = {"one device": single}
    if sharded:
      panels[f"{args.devices} devices, FSDP, per device"] = sharded
    for shape in shapes:
      bar_plot(shape, panels, args.out / f"{shape.name}.png")
  return results


if __name__ == "__main__":
  try:
    main()
  except (RuntimeError, ValueError, OSError) as error:
    sys.exit(f"python -m models.bench_memory: error: {error}")
