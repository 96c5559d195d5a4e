"""One published model's train-step memory under each optimizer setup, and Ember's extra scratch.

:func:`analyze` builds a ``models.nets.published`` shape from abstract parameters, compiles its
train step (``models.bench.memory.step_memory``) under each setup of
``models.bench.memory.precision`` at the reported batch, searches the largest batch that fits each
memory budget (``models.bench.memory.batch_search``) and returns a :class:`Measured` per setup:
parameter and optimizer-state bytes, the step's memory at every batch compiled. With ``devices > 1``
the layout is ``models.training.layouts``'s and every byte count is per device. :func:`temp_checks`
sets Ember's temporaries against AdamW's (the issue's criterion: at most 5% of Ember's largest table
more). :func:`analysis_child` runs an analysis in a process of its own, which JAX starts with the
layout's device count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import math
import os
import sys
import time

import jax
import jax.numpy as jnp

from ember_optax.diagnostics import tree_bytes
from models.bench.memory.batch_search import largest_fitting_batch
from models.bench.memory.child_process import ChildProcess
from models.bench.memory.precision import PRECISIONS, StateBytes, optimizer_state_bytes
from models.bench.memory.step_memory import StepBuilder, StepMemory
from models.nets import published
from models.reporting.tables import format_bytes
from models.training.layouts import batch_sharding, fsdp_mesh, shard_shapes

GIB = 2**30
# The 5% criterion: Ember may add at most this share of its largest table to the step's scratch.
TEMP_ALLOWANCE = 0.05


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
    out['state'] = self.state._asdict()
    out['step']['total'] = self.step.total
    out['steps_by_batch'] = {str(b): dataclasses.asdict(m) for b, m in self.steps_by_batch.items()}
    out['fits'] = {f'{k:g}': v for k, v in self.fits.items()}
    return out

  @classmethod
  def from_json(cls, data: dict) -> Measured:
    data = dict(data)
    data['shape'] = published.DecoderShape(**data['shape'])
    data['state'] = StateBytes(**data['state'])
    data['step'] = StepMemory(**{k: v for k, v in data['step'].items() if k != 'total'})
    data['fits'] = {float(k): v for k, v in data['fits'].items()}
    data['steps_by_batch'] = {int(b): StepMemory(**m) for b, m in data['steps_by_batch'].items()}
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
    mesh = fsdp_mesh(devices)
    activation_sharding = batch_sharding(mesh)
  graphdef, params = published.abstract_model(
    shape,
    param_dtype=PRECISIONS[precision],
    remat=remat,
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
    results.append(
      Measured(
        shape,
        precision,
        name,
        devices,
        seq_len,
        batch,
        n_params,
        tree_bytes(shards),
        optimizer_state_bytes(name, params, labels, builder.param_shardings),
        steps[batch],
        fits,
        dict(sorted(steps.items())),
        seconds,
      )
    )
    (log or _log)(
      f'  {shape.name:>13} {precision:>8} {name:>9} on {devices} device(s): step '
      f'{format_bytes(steps[batch].total)} at batch {batch}; {len(steps)} compiles, {seconds:.0f} s'
    )
  return results


def _log(line: str) -> None:
  print(line, file=sys.stderr, flush=True)


def _measure_step(
  builder: StepBuilder, batch: int, budgets_gib: Sequence[float]
) -> tuple[dict[int, StepMemory], dict[float, int]]:
  """The step's memory at every batch compiled, and the largest fitting batch per budget."""
  steps = {batch: builder.memory(batch)}

  def total_at(b: int) -> int:
    steps[b] = builder.memory(b)
    return steps[b].total

  known = {batch: steps[batch].total}
  fits = {
    budget: largest_fitting_batch(total_at, int(budget * GIB), known) for budget in budgets_gib
  }
  return steps, fits


def analyze_json(shapes: Sequence[dict], precisions: Sequence[str], **kwargs) -> list[dict]:
  """:func:`analyze` of every shape (``DecoderShape`` fields) and precision, as JSON."""
  return [
    m.to_json()
    for shape in shapes
    for precision in precisions
    for m in analyze(published.DecoderShape(**shape), precision, **kwargs)
  ]


def analysis_child(
  shape: published.DecoderShape, precisions: Sequence[str], *, devices: int, **kwargs
) -> ChildProcess:
  """Starts :func:`analyze` of one shape in its own process, on ``devices`` CPU devices (JAX
  must see the device count when it starts); ``.result()`` gives its ``Measured`` as JSON."""
  env = {'JAX_PLATFORMS': 'cpu'}
  if devices > 1:
    flags = os.environ.get('XLA_FLAGS', '')
    env['XLA_FLAGS'] = f'{flags} --xla_force_host_platform_device_count={devices}'.strip()
  return ChildProcess(
    f'{__name__}:{analyze_json.__name__}',
    {
      'shapes': [dataclasses.asdict(shape)],
      'precisions': list(precisions),
      'devices': devices,
      **kwargs,
    },
    env=env,
    prefix='' if devices == 1 else f'[{devices} devices] ',
  )


# -- Ember's temporaries against AdamW's ------------------------------------------------------


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
    adamw = by_key.get((shape, precision, devices, 'adamw'))
    if name != 'ember' or adamw is None:
      continue
    extras = {
      b: ember.steps_by_batch[b].temp - adamw.steps_by_batch[b].temp
      for b in set(ember.steps_by_batch) & set(adamw.steps_by_batch)
    }
    worst = max(extras, key=extras.get)
    checks.append(
      TempCheck(
        shape.name,
        precision,
        devices,
        worst,
        extras[worst],
        largest_table_bytes(shape, precision, devices),
      )
    )
  return checks
