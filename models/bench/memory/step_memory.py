"""The memory of a whole train step, from XLA's analysis of the step compiled ahead of time.

:class:`StepBuilder` lowers a model's train step (forward, cross-entropy loss, backward, optimizer
update, ``optax.apply_updates``; parameters and optimizer state donated) from abstract parameters
for any batch, on one device or in an FSDP layout, and compiles it; :class:`StepMemory` reads
``compiled.memory_analysis()``: argument, output, aliased and temporary bytes. Nothing is
allocated and nothing runs.

Which numbers hold where: arguments (parameters + state + the token batch), outputs and donated
(aliased) bytes follow from shapes and dtypes alone and are the same on every backend.
Temporaries (gradients, activations, the optimizer's scratch) are XLA:CPU's buffer assignment;
a GPU or TPU compiler fuses and schedules differently, so take them as an estimate.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import functools
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import optax

import ember_optax
from models.bench.memory.precision import float32_statistics_optimizer
from models.training.layouts import batch_sharding, fsdp_shardings

# XLA options of every compile. The backend (LLVM) optimization level acts after buffer
# assignment, so the memory analysis does not depend on it (tested); level 0 halves compile time.
COMPILER_OPTIONS = {'xla_backend_optimization_level': 0}


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


@dataclasses.dataclass(frozen=True)
class StepBuilder:
  """Compiles one model's train step under one optimizer for any batch size.

  Attributes:
    graphdef: the model's graph (``nnx.split``).
    params: the parameters as a pure dict (abstract or concrete).
    labels: ``"token_table"``/``"body"`` per parameter.
    optimizer: setup name (see ``models.bench.memory.precision.float32_statistics_optimizer``).
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
    optimizer = float32_statistics_optimizer(self.optimizer, self.labels)
    state = jax.eval_shape(optimizer.init, self.params)
    jit_kwargs = {}
    if self.mesh is not None:
      state_shardings = ember_optax.state_shardings(state, self.param_shardings)
      replicated = NamedSharding(self.mesh, PartitionSpec())
      jit_kwargs = dict(
        in_shardings=(self.param_shardings, state_shardings, batch_sharding(self.mesh)),
        out_shardings=(self.param_shardings, state_shardings, replicated),
      )
    # keep_unused: an input the step never reads (Adafactor's placeholder for a factored
    # second moment) still sits in memory between steps, so it counts among the arguments.
    step = jax.jit(
      train_step(self.graphdef, optimizer), donate_argnums=(0, 1), keep_unused=True, **jit_kwargs
    )
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
