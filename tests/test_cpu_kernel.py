"""The compiled CPU statistics kernel: built, used, and equal to the XLA reductions."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ember_optax
from ember_optax._src import cpu_kernel, transform


def _reference(grad):
  squares = np.asarray(grad, np.float64) ** 2
  return squares.sum(-1), squares.sum(-2)


def test_kernel_is_built_and_takes_float32_and_bfloat16_tables():
  assert cpu_kernel.available(), (
      'the CPU kernel was not built: reinstall with `pip install -e .` and a C++17 compiler'
  )
  for dtype in (jnp.float32, jnp.bfloat16):
    params = jnp.zeros((300, 40), dtype)
    optimizer = ember_optax.ember(1e-3)
    hlo = jax.jit(optimizer.update).lower(params, optimizer.init(params), params).as_text()
    assert 'ember_squared_sums' in hlo, dtype


# Shapes with a ragged last vector of columns, one row, one block, several blocks
# (float32 rows of 520 columns make blocks of 504 rows) and stacked tables.
@pytest.mark.parametrize(
    'shape, dtype',
    [
        ((1, 1), jnp.float32),
        ((7, 13), jnp.float32),
        ((2049, 520), jnp.float32),
        ((3, 1111, 96), jnp.bfloat16),
        ((2, 3, 70, 9), jnp.float32),
    ],
)
def test_kernel_matches_float64_sums(shape, dtype):
  grad = jax.random.normal(jax.random.PRNGKey(0), shape, dtype)
  row_sums, col_sums = jax.jit(cpu_kernel.squared_sums)(grad)
  expected_rows, expected_cols = _reference(grad.astype(jnp.float32))
  assert row_sums.dtype == col_sums.dtype == jnp.float32
  assert row_sums.shape == shape[:-1] and col_sums.shape == shape[:-2] + shape[-1:]
  # Float32 running sums, as XLA's reductions: about sqrt(n) roundings of 6e-8.
  np.testing.assert_allclose(row_sums, expected_rows, rtol=1e-5)
  np.testing.assert_allclose(col_sums, expected_cols, rtol=1e-5)


def test_kernel_is_deterministic_across_threads():
  grad = jax.random.normal(jax.random.PRNGKey(1), (8192, 256))
  sums = jax.jit(cpu_kernel.squared_sums)
  first = sums(grad)
  for _ in range(5):
    for a, b in zip(first, sums(grad), strict=True):
      np.testing.assert_array_equal(a, b)


def test_kernel_propagates_non_finite_values():
  grad = jnp.ones((40, 24)).at[3, 5].set(jnp.inf).at[10, 7].set(jnp.nan)
  row_sums, col_sums = cpu_kernel.squared_sums(grad)
  expected_rows, expected_cols = _reference(grad)
  np.testing.assert_array_equal(row_sums, expected_rows.astype(np.float32))
  np.testing.assert_array_equal(col_sums, expected_cols.astype(np.float32))


def test_kernel_under_vmap_and_jvp():
  grad = jax.random.normal(jax.random.PRNGKey(2), (4, 33, 17))
  batched = jax.vmap(cpu_kernel.squared_sums)(grad)
  looped = [cpu_kernel.squared_sums(g) for g in grad]
  for i, parts in enumerate(looped):
    for a, b in zip(batched, parts, strict=True):
      np.testing.assert_allclose(a[i], b, rtol=1e-6)
  tangent = jax.random.normal(jax.random.PRNGKey(3), grad.shape)
  _, kernel_tangents = jax.jvp(cpu_kernel.squared_sums, (grad,), (tangent,))
  _, xla_tangents = jax.jvp(transform._squared_sums_xla, (grad,), (tangent,))
  for a, b in zip(kernel_tangents, xla_tangents, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5)


def test_ember_without_the_kernel_takes_the_same_steps(monkeypatch):
  params = {'embed': jax.random.normal(jax.random.PRNGKey(4), (600, 48), jnp.bfloat16)}
  grads = jax.tree.map(lambda p: (p * 0.3 + 0.01).astype(p.dtype), params)

  def run():
    optimizer = ember_optax.ember(1e-2)
    state = optimizer.init(params)
    updates, state = jax.jit(optimizer.update)(grads, state, params)
    return optax.apply_updates(params, updates), state

  with_kernel = run()
  monkeypatch.setattr(cpu_kernel, 'supports', lambda dtype: False)
  without_kernel = run()
  for a, b in zip(jax.tree.leaves(with_kernel), jax.tree.leaves(without_kernel), strict=True):
    np.testing.assert_allclose(
        np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=1e-5, atol=1e-7
    )
