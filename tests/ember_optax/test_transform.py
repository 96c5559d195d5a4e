"""Ember's rule: golden trajectories, state layout, dtypes and bad input."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ember_optax

GOLDEN = pathlib.Path(__file__).parent / 'golden'
CASES = json.loads((GOLDEN / 'cases.json').read_text())


def _reference_step(param, grad, row, col, scale, t, lr, b2, eps, wd):
  """The rule as written in the paper, in float64 NumPy."""
  g2 = grad.astype(np.float64) ** 2
  row = b2 * row + (1 - b2) * g2.mean(-1)
  col = b2 * col + (1 - b2) * g2.mean(-2)
  scale = b2 * scale + (1 - b2) * g2.mean((-2, -1))
  vhat = (
    row[..., :, None]
    * col[..., None, :]
    / (np.maximum(scale, 1e-30)[..., None, None] * (1 - b2**t))
  )
  return param - lr * (grad / (np.sqrt(vhat) + eps) + wd * param), row, col, scale


@pytest.mark.parametrize('case', CASES, ids=[c['name'] for c in CASES])
def test_reproduces_reference_trajectories(case):
  data = np.load(GOLDEN / f'{case["name"]}.npz')
  optimizer = ember_optax.ember(
    case['lr'], b2=case['beta2'], eps=case['eps'], weight_decay=case['wd']
  )
  params = jnp.asarray(data['params0'])
  state = optimizer.init(params)

  @jax.jit
  def step(params, state, grads):
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for t in range(case['T']):
    params, state = step(params, state, jnp.asarray(data['grads'][t]))
    expected = data['params'][t]
    np.testing.assert_allclose(
      params, expected, rtol=1e-5, atol=2e-6 * np.abs(expected).max(), err_msg=f'step {t}'
    )
  ember_state = state[0]
  assert int(ember_state.count) == int(data['count'])
  np.testing.assert_allclose(ember_state.row, data['row'], rtol=2e-6, atol=1e-30)
  np.testing.assert_allclose(ember_state.col, data['col'], rtol=2e-6)
  np.testing.assert_allclose(ember_state.scale, data['scale'], rtol=2e-6)


@pytest.mark.parametrize('shape', [(37, 11), (3, 20, 5), (2, 2, 9, 4), (3000, 7)])
def test_matches_float64_rule_on_stacked_and_tall_tables(shape):
  # A tall table (3000, 7) next to stacked ones.
  rng = np.random.default_rng(0)
  lr, b2, eps, wd = 0.01, 0.9, 1e-6, 0.1
  param = rng.normal(size=shape).astype(np.float32)
  row, col = np.zeros(shape[:-1]), np.zeros(shape[:-2] + shape[-1:])
  scale = np.zeros(shape[:-2])
  optimizer = ember_optax.ember(lr, b2=b2, eps=eps, weight_decay=wd)
  params, state = jnp.asarray(param), optimizer.init(jnp.asarray(param))
  expected = param.astype(np.float64)
  for t in range(1, 4):
    grad = rng.normal(size=shape).astype(np.float32)
    grad[..., ::3, :] = 0  # Rows without gradient still count in the column mean.
    expected, row, col, scale = _reference_step(expected, grad, row, col, scale, t, lr, b2, eps, wd)
    updates, state = jax.jit(optimizer.update)(jnp.asarray(grad), state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(params, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(state[0].row, row, rtol=1e-5)
  np.testing.assert_allclose(state[0].col, col, rtol=1e-5)
  np.testing.assert_allclose(state[0].scale, scale, rtol=1e-5)


def test_state_is_v_plus_d_plus_one_floats_per_table():
  params = {'embed': jnp.zeros((1000, 64)), 'stacked': jnp.zeros((4, 300, 32))}
  state = ember_optax.scale_by_ember().init(params)
  per_leaf = jax.tree.map(
    lambda r, c, s: r.size + c.size + s.size, state.row, state.col, state.scale
  )
  assert per_leaf == {'embed': 1000 + 64 + 1, 'stacked': 4 * (300 + 32 + 1)}
  assert state.count.shape == () and state.count.dtype == jnp.int32


def test_unfactored_leaves_use_elementwise_rule():
  b2, eps = 0.9, 1e-8
  grads = [jnp.array([1.0, -2.0, 0.0]), jnp.array([0.5, 1.0, 3.0])]
  optimizer = ember_optax.scale_by_ember(b2=b2, eps=eps)
  state = optimizer.init(jnp.zeros(3))
  v = np.zeros(3)
  for t, g in enumerate(grads, start=1):
    updates, state = optimizer.update(g, state)
    v = b2 * v + (1 - b2) * np.asarray(g) ** 2
    np.testing.assert_allclose(updates, g / (np.sqrt(v / (1 - b2**t)) + eps), rtol=1e-6)
  scalar_state = optimizer.init(jnp.float32(2.0))
  updates, _ = optimizer.update(jnp.float32(-3.0), scalar_state)
  np.testing.assert_allclose(updates, -1.0, rtol=1e-6)


@pytest.mark.parametrize(
  'dtype, stat_dtype',
  [(jnp.float32, jnp.float32), (jnp.bfloat16, jnp.float32), (jnp.float16, jnp.float32)],
)
def test_low_precision_params_keep_float32_statistics(dtype, stat_dtype):
  params = {'w': jnp.ones((16, 8), dtype), 'b': jnp.ones((8,), dtype)}
  optimizer = ember_optax.ember(1e-2)
  state = optimizer.init(params)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.25), params)
  updates, new_state = jax.jit(optimizer.update)(grads, state, params)
  assert jax.tree.map(lambda u: u.dtype, updates) == {'w': dtype, 'b': dtype}
  for tree in (new_state[0].row, new_state[0].col, new_state[0].scale):
    assert all(leaf.dtype == stat_dtype for leaf in jax.tree.leaves(tree))
  # A constant gradient gives unit-size steps, bf16 included.
  np.testing.assert_allclose(np.asarray(updates['w'], np.float32), -1e-2, rtol=1e-2)


def test_float64_params_keep_float64_statistics():
  with jax.enable_x64(True):
    params = jnp.ones((6, 5), jnp.float64)
    optimizer = ember_optax.ember(1e-2)
    state = optimizer.init(params)
    updates, state = optimizer.update(jnp.full_like(params, 0.1), state, params)
    assert updates.dtype == jnp.float64
    assert state[0].row.dtype == state[0].col.dtype == jnp.float64


def test_state_shapes_and_dtypes_are_stable_across_steps():
  params = {'table': jnp.ones((40, 6), jnp.bfloat16), 'bias': jnp.ones((6,))}
  optimizer = ember_optax.ember(1e-2)
  state = optimizer.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  _, new_state = optimizer.update(grads, state, params)
  assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == jax.tree.map(
    lambda x: (x.shape, x.dtype), new_state
  )


def test_empty_table_is_a_no_op():
  optimizer = ember_optax.ember(1e-2)
  params = jnp.zeros((0, 4))
  updates, state = optimizer.update(params, optimizer.init(params), params)
  assert updates.shape == (0, 4) and state[0].col.shape == (4,)


def test_all_zero_gradient_gives_zero_update():
  optimizer = ember_optax.scale_by_ember()
  params = jnp.ones((5, 4))
  updates, state = optimizer.update(jnp.zeros((5, 4)), optimizer.init(params))
  assert np.all(np.asarray(updates) == 0)
  assert np.all(np.isfinite(np.asarray(state.col)))


@pytest.mark.parametrize('dtype', [jnp.int32, jnp.bool_])
def test_non_float_parameters_are_rejected_with_their_path(dtype):
  params = {'model': {'embed': jnp.zeros((4, 3)), 'step': jnp.zeros((), dtype)}}
  with pytest.raises(TypeError, match=r"'model/step'.*floating-point"):
    ember_optax.ember(1e-3).init(params)


@pytest.mark.parametrize(
  'kwargs, message',
  [
    ({'b2': 1.0}, r'b2=1.0 is outside \[0, 1\)'),
    ({'b2': -0.1}, r'b2=-0.1 is outside'),
    ({'eps': -1e-8}, 'eps=-1e-08 must be a non-negative'),
    ({'learning_rate': -1.0}, 'learning_rate=-1.0 must be a non-negative'),
    ({'learning_rate': float('nan')}, 'learning_rate=nan must be a non-negative'),
    ({'weight_decay': -0.1}, 'weight_decay=-0.1 must be'),
  ],
)
def test_bad_hyperparameters_are_rejected_at_construction(kwargs, message):
  kwargs = {'learning_rate': 1e-3, **kwargs}
  with pytest.raises(ValueError, match=message):
    ember_optax.ember(**kwargs)


def test_gradient_of_wrong_shape_is_rejected_before_state_changes():
  params = {'table': jnp.ones((8, 4))}
  optimizer = ember_optax.ember(1e-2)
  state = optimizer.init(params)
  before = jax.tree.map(np.asarray, state)
  with pytest.raises(ValueError, match=r"'table' has shape \(4, 8\).*built for shape \(8, 4\)"):
    optimizer.update({'table': jnp.ones((4, 8))}, state, params)
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, state))
