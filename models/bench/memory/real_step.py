"""XLA's memory analysis against reality: the resident memory of really running a train step.

:func:`real_step_memory` compiles the train step of a ``models.nets.gpt`` preset (``small`` by
default) exactly as ``models.bench.memory.step_memory`` analyzes it, runs it, and measures the
process's resident set (``/proc/self``, Linux): the growth when the arguments are created, and the
peak growth of each step. :func:`reality_check` runs it for each optimizer setup in a fresh process,
with glibc's allocator set so that freed buffers go back to the system.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
from pathlib import Path
import time
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

from models.bench.memory.child_process import ChildProcess
from models.bench.memory.precision import float32_statistics_optimizer
from models.bench.memory.step_memory import StepBuilder, StepMemory


def _rss_bytes(field: str) -> int:
  """A ``VmRSS``/``VmHWM`` line of ``/proc/self/status``, in bytes."""
  for line in Path('/proc/self/status').read_text().splitlines():
    if line.startswith(field + ':'):
      return int(line.split()[1]) * 1024
  raise RuntimeError(f'no {field} in /proc/self/status')


def _wait_for_steady_rss(interval: float = 0.05, timeout: float = 5.0) -> None:
  """Returns once the resident set size stops changing (or after ``timeout`` seconds)."""
  deadline = time.perf_counter() + timeout
  last = _rss_bytes('VmRSS')
  while time.perf_counter() < deadline:
    time.sleep(interval)
    now = _rss_bytes('VmRSS')
    if now == last:
      return
    last = now


def real_step_memory(optimizer: str, preset: str = 'small', repeats: int = 3) -> dict:
  """Runs the ``models.nets.gpt`` preset's train step and measures the process's resident memory.

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
  from models.nets import gpt  # The reference GPT of the main job; only the reality check needs it.
  from models.training.presets import PRESETS

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
  tx = float32_statistics_optimizer(optimizer, labels)
  init = jax.jit(tx.init).lower(abstract_params).compile()
  shape = (settings.batch_size, settings.seq_len + 1)
  make_tokens = (
    jax.jit(lambda: jax.random.randint(jax.random.key(0), shape, 0, config.vocab_size))
    .lower()
    .compile()
  )

  before = _rss_bytes('VmRSS')
  params = make_params()
  state = init(params)
  tokens = make_tokens()
  jax.block_until_ready((params, state, tokens))
  arguments_rss = _rss_bytes('VmRSS') - before

  def peak_growth(function: Callable, *args) -> tuple[int, Any]:
    _wait_for_steady_rss()  # The runtime frees the last call's buffers after returning.
    Path('/proc/self/clear_refs').write_text('5')  # Resets VmHWM to the current RSS.
    before = _rss_bytes('VmRSS')
    result = jax.block_until_ready(function(*args))
    return _rss_bytes('VmHWM') - before, result

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
    'estimate': dataclasses.asdict(estimate),
    'arguments_rss': arguments_rss,
    'step_rss': step_rss,
    'loss': float(loss),
    'matmul_probe': {
      'shape': [list(hidden.shape), list(head.shape)],
      'temp': StepMemory.of(probe).temp,
      'rss': probe_rss,
    },
  }


def reality_child(optimizer: str, preset: str = 'small') -> ChildProcess:
  """Starts :func:`real_step_memory` in a fresh process; ``.result()`` gives its result."""
  # A fixed threshold also turns off glibc's dynamic one, which would keep freed buffers of up
  # to 32 MiB in the heap and hide them from the next step's peak.
  env = {'MALLOC_MMAP_THRESHOLD_': str(1 << 16), 'MALLOC_TRIM_THRESHOLD_': str(1 << 16)}
  return ChildProcess(
    f'{__name__}:{real_step_memory.__name__}', {'optimizer': optimizer, 'preset': preset}, env
  )


def reality_check(optimizers: Sequence[str], preset: str = 'small') -> dict[str, dict]:
  """:func:`real_step_memory` for each optimizer, each in a fresh process, one at a time."""
  return {name: reality_child(name, preset).result() for name in optimizers}
