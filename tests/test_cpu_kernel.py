"""The compiled CPU statistics kernel, its switch, and the XLA forms it stands in for."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ember_optax
from ember_optax._src import cpu_kernel, squared_sums


@pytest.fixture(scope='module', autouse=True)
def built_kernel():
  """Builds (or loads) and registers the kernel, whichever test of this file runs first."""
  status = ember_optax.cpu_kernel_status()
  assert status.available, status.reason


def _reference(grad):
  squares = np.asarray(grad, np.float64) ** 2
  return squares.sum(-1), squares.sum(-2)


@pytest.fixture
def switch(monkeypatch):
  """``use_cpu_kernel``, starting from the default and reset to it afterwards."""
  monkeypatch.delenv(cpu_kernel.SWITCH_ENV, raising=False)
  ember_optax.use_cpu_kernel(None)
  yield ember_optax.use_cpu_kernel
  ember_optax.use_cpu_kernel(None)


def _step_hlo(optimizer, params) -> str:
  return jax.jit(optimizer.update).lower(params, optimizer.init(params), params).as_text()


def test_kernel_is_built_and_takes_float32_and_bfloat16_tables():
  status = ember_optax.cpu_kernel_status()
  assert status.available, status.reason
  assert status.enabled and status.library_path and status.compiler
  for dtype in (jnp.float32, jnp.bfloat16):
    assert 'ember_squared_sums' in _step_hlo(ember_optax.ember(1e-3), jnp.zeros((300, 40), dtype))
  # Other dtypes and empty tables take XLA's reductions.
  for params in (jnp.zeros((300, 40), jnp.float16), jnp.zeros((0, 40))):
    assert 'ember_squared_sums' not in _step_hlo(ember_optax.ember(1e-3), params)


def test_status_is_a_json_serializable_named_tuple():
  status = ember_optax.cpu_kernel_status()
  assert isinstance(status, ember_optax.CpuKernelStatus)
  fields = json.loads(json.dumps(status._asdict()))
  assert {'available', 'reason', 'library_path'} <= set(fields)
  assert status.reason.endswith('.') and status.jaxlib_version == jax.lib.__version__


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
    # Wide rows (a Dense head (D, V)): fewer, longer blocks keep the partial sums small.
    ((40, 70000), jnp.float32),
    ((300, 40000), jnp.bfloat16),
  ],
)
@pytest.mark.parametrize(
  'sums',
  [cpu_kernel.squared_sums, squared_sums._fenced_reductions, squared_sums._two_reductions],
  ids=['kernel', 'fenced_xla', 'two_xla'],
)
def test_sums_match_float64_sums(shape, dtype, sums):
  grad = jax.random.normal(jax.random.PRNGKey(0), shape, dtype)
  row_sums, col_sums = jax.jit(sums)(grad)
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


@pytest.mark.parametrize(
  'sums', [cpu_kernel.squared_sums, squared_sums._fenced_reductions], ids=['kernel', 'fenced_xla']
)
def test_sums_under_vmap_and_jvp(sums):
  grad = jax.random.normal(jax.random.PRNGKey(2), (4, 33, 17))
  batched = jax.vmap(sums)(grad)
  looped = [sums(g) for g in grad]
  for i, parts in enumerate(looped):
    for a, b in zip(batched, parts, strict=True):
      np.testing.assert_allclose(a[i], b, rtol=1e-6)
  tangent = jax.random.normal(jax.random.PRNGKey(3), grad.shape)
  _, tangents = jax.jvp(sums, (grad,), (tangent,))
  _, xla_tangents = jax.jvp(squared_sums._two_reductions, (grad,), (tangent,))
  for a, b in zip(tangents, xla_tangents, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5)


def _run_ember(params):
  grads = jax.tree.map(lambda p: (p * 0.3 + 0.01).astype(p.dtype), params)
  optimizer = ember_optax.ember(1e-2)
  state = optimizer.init(params)
  updates, state = jax.jit(optimizer.update)(grads, state, params)
  return optax.apply_updates(params, updates), state


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_use_cpu_kernel_switches_the_path_and_ember_takes_the_same_steps(switch, dtype):
  params = {'embed': jax.random.normal(jax.random.PRNGKey(4), (600, 48), dtype)}
  optimizer = ember_optax.ember(1e-2)
  step = jax.jit(optimizer.update)
  state = optimizer.init(params)
  assert 'ember_squared_sums' in step.lower(params, state, params).as_text()
  with_kernel = _run_ember(params)

  switch(False)
  # The same jitted function traces again and takes the XLA reductions.
  assert 'ember_squared_sums' not in step.lower(params, state, params).as_text()
  status = ember_optax.cpu_kernel_status()
  assert not status.available and not status.enabled
  assert 'use_cpu_kernel(True)' in status.reason
  without_kernel = _run_ember(params)
  for a, b in zip(jax.tree.leaves(with_kernel), jax.tree.leaves(without_kernel), strict=True):
    np.testing.assert_allclose(
      np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=1e-5, atol=1e-7
    )

  switch(True)
  assert 'ember_squared_sums' in step.lower(params, state, params).as_text()
  switch(None)
  assert ember_optax.cpu_kernel_status().available


def test_environment_variable_turns_the_kernel_off(switch, monkeypatch):
  monkeypatch.setenv(cpu_kernel.SWITCH_ENV, '0')
  status = ember_optax.cpu_kernel_status()
  assert not status.available and not status.enabled
  assert 'EMBER_OPTAX_CPU_KERNEL=0' in status.reason
  assert 'ember_squared_sums' not in _step_hlo(ember_optax.ember(1e-3), jnp.zeros((300, 40)))
  # The function overrides the environment.
  switch(True)
  assert ember_optax.cpu_kernel_status().available


def test_bad_switch_values_are_rejected(switch, monkeypatch):
  with pytest.raises(TypeError, match='enabled must be True, False or None'):
    ember_optax.use_cpu_kernel('no')
  monkeypatch.setenv(cpu_kernel.SWITCH_ENV, 'maybe')
  with pytest.raises(ValueError, match="EMBER_OPTAX_CPU_KERNEL='maybe'.*set it to 0"):
    ember_optax.cpu_kernel_status()
