"""The compiled Ember step keeps no table-sized temporary (memory analysis is deterministic)."""

import jax
import jax.numpy as jnp
import optax
import pytest

import ember_optax


def _scratch_bytes(optimizer: optax.GradientTransformation, params) -> int:
  """Scratch memory of the jitted, donated step, beyond its arguments and outputs."""

  def step(params, state, grads):
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = jax.eval_shape(optimizer.init, params)
  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, params).compile()
  return int(compiled.memory_analysis().temp_size_in_bytes)


# Embedding tables (V, D), stacked tables, and Flax Dense heads (D, V), whose rows are wide:
# GPT-2's and Gemma-3-1B's (abstract: nothing is allocated).
@pytest.mark.parametrize(
  'shape',
  [
    (32768, 512),
    (4, 16384, 256),
    (50257, 768),
    (4, 4096, 256),
    (50257, 64),
    (768, 50257),
    (1152, 262144),
  ],
)
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_ember_step_has_no_table_sized_temporary(shape, dtype):
  params = jax.ShapeDtypeStruct(shape, dtype)
  temp = _scratch_bytes(ember_optax.ember(1e-3), params)
  table_bytes = params.size * params.dtype.itemsize
  assert temp <= 0.05 * table_bytes, f'{temp / 2**20:.1f} MiB of scratch'


def test_ember_adamw_step_has_no_table_sized_temporary():
  params = {
    'embed': {'embedding': jnp.zeros((32768, 256))},
    'mlp': {'kernel': jnp.zeros((256, 256))},
  }
  optimizer = ember_optax.ember_adamw(1e-3, vocab_size=32768)
  temp = _scratch_bytes(optimizer, params)
  assert temp <= 0.05 * params['embed']['embedding'].nbytes
