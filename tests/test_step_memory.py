"""The compiled Ember step keeps no table-sized temporary (memory analysis is deterministic)."""

import jax
import jax.numpy as jnp
import pytest

import ember_optax
from models import bench_step


# On one CPU device float32 and bfloat16 tables take the compiled kernel.
@pytest.mark.parametrize(
    'shape', [(32768, 512), (4, 16384, 256), (50257, 768), (4, 4096, 256), (50257, 64)]
)
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_ember_step_has_no_table_sized_temporary(shape, dtype):
  params = jnp.zeros(shape, dtype)
  temp = bench_step.compiled_temp_bytes(ember_optax.ember(1e-3), params, params)
  assert temp <= 0.05 * params.nbytes, f'{temp / 2**20:.1f} MiB of scratch'


def test_ember_adamw_step_has_no_table_sized_temporary():
  params = {
      'embed': {'embedding': jnp.zeros((32768, 256))},
      'mlp': {'kernel': jnp.zeros((256, 256))},
  }
  optimizer = ember_optax.ember_adamw(1e-3, vocab_size=32768)
  temp = bench_step.compiled_temp_bytes(optimizer, params, params)
  assert temp <= 0.05 * params['embed']['embedding'].nbytes
  assert jax.device_count() == 1  # The compiled kernel is the one under test.
