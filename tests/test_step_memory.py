"""The compiled Ember step keeps no table-sized temporary (memory analysis is deterministic)."""

import jax
import jax.numpy as jnp
import pytest

import ember_optax
from models import bench_step


# Large tables take the single-pass kernel, small ones the two-reduction form.
@pytest.mark.parametrize(
    'shape', [(32768, 512), (4, 16384, 256), (50257, 768), (4, 4096, 256), (50257, 64)]
)
def test_ember_step_has_no_table_sized_temporary(shape):
  params = jnp.zeros(shape, jnp.float32)
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
  assert jax.device_count() == 1  # The single-pass kernel is the one under test.
