"""sparse_ember: the exact step on touched rows, against dense ember and the reference rule."""

import json
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ember_optax
from ember_optax import IndexedRows

GOLDEN = pathlib.Path(__file__).parent / 'golden'
CASES = {case['name']: case for case in json.loads((GOLDEN / 'cases.json').read_text())}


def _zipf_ids(rng, vocab, shape, exponent=1.2):
  return np.minimum(rng.zipf(exponent, size=shape) - 1, vocab - 1).astype(np.int32)


def _sparse_step(optimizer):
  @jax.jit
  def step(table, state, ids, row_grads):
    updates, state = optimizer.update(IndexedRows(ids, row_grads), state, table)
    return ember_optax.apply_row_updates(table, updates), state

  return step


def _dense_step(optimizer):
  @jax.jit
  def step(table, state, ids, row_grads):
    # The gradient JAX builds for table[ids]: rows scattered (and summed) into a dense table.
    grad = jnp.zeros(table.shape, row_grads.dtype).at[ids].add(row_grads, mode='drop')
    updates, state = optimizer.update(grad, state, table)
    return optax.apply_updates(table, updates), state

  return step


def _run_both(sparse, dense, table, batches):
  sparse_step, dense_step = _sparse_step(sparse), _dense_step(dense)
  s_table, s_state = table, sparse.init(table)
  d_table, d_state = table, dense.init(table)
  for ids, row_grads in batches:
    s_table, s_state = sparse_step(s_table, s_state, ids, row_grads)
    d_table, d_state = dense_step(d_table, d_state, ids, row_grads)
    yield s_table, s_state, d_table, d_state


def test_equals_dense_ember_every_step_with_rows_untouched_for_hundreds_of_steps():
  rng = np.random.default_rng(0)
  vocab, width, steps = 2000, 16, 400
  table = jnp.asarray(rng.normal(size=(vocab, width)).astype(np.float32))
  batches = []
  for t in range(steps):
    ids = _zipf_ids(rng, vocab, (4, 16))
    if 50 <= t < steps - 1:
      ids = ids % 20  # Rows 20 and up sit untouched for 349 steps ...
    if t == steps - 1:
      ids = np.arange(64, dtype=np.int32).reshape(4, 16) * 31  # ... then come back.
    batches.append((ids, rng.normal(size=ids.shape + (width,)).astype(np.float32)))
  sparse = ember_optax.sparse_ember(1e-2)
  dense = ember_optax.ember(1e-2)
  for t, results in enumerate(_run_both(sparse, dense, table, batches)):
    s_table, s_state, d_table, d_state = results
    np.testing.assert_allclose(s_table, d_table, rtol=1e-5, atol=2e-6, err_msg=f'step {t}')
  moved = np.abs(np.asarray(s_table) - np.asarray(table)).max(axis=1) > 0
  assert moved[np.arange(64) * 31].all()
  ember_state = d_state[0]
  np.testing.assert_allclose(s_state.col, ember_state.col, rtol=1e-5)
  np.testing.assert_allclose(s_state.scale, ember_state.scale, rtol=1e-5)
  row = ember_optax.sparse_ember_row_statistic(s_state)
  np.testing.assert_allclose(row, ember_state.row, rtol=5e-5, atol=1e-30)
  assert int(s_state.count) == steps


@pytest.mark.parametrize('name', ['dense_default', 'wide_table_big_eps'])
def test_reproduces_reference_trajectories_from_the_rows_that_have_gradients(name):
  case, data = CASES[name], np.load(GOLDEN / f'{name}.npz')
  optimizer = ember_optax.sparse_ember(case['lr'], b2=case['beta2'], eps=case['eps'])
  step = _sparse_step(optimizer)
  table = jnp.asarray(data['params0'])
  state = optimizer.init(table)
  for t in range(case['T']):
    grad = data['grads'][t]
    ids = np.flatnonzero(np.abs(grad).sum(axis=1) > 0).astype(np.int32)
    table, state = step(table, state, ids, grad[ids])
    expected = data['params'][t]
    np.testing.assert_allclose(
      table, expected, rtol=1e-5, atol=2e-6 * np.abs(expected).max(), err_msg=f'step {t}'
    )
  np.testing.assert_allclose(state.col, data['col'], rtol=2e-6)
  np.testing.assert_allclose(state.scale, data['scale'], rtol=2e-6)
  row = ember_optax.sparse_ember_row_statistic(state, case['beta2'])
  np.testing.assert_allclose(row, data['row'], rtol=2e-6, atol=1e-30)


def test_weight_decay_applies_to_touched_rows_only():
  """The reference rule in float64 with the decay restricted to the rows each step touched."""
  case, data = CASES['sparse_rows_wd'], np.load(GOLDEN / 'sparse_rows_wd.npz')
  lr, b2, eps, wd = case['lr'], case['beta2'], case['eps'], case['wd']
  optimizer = ember_optax.sparse_ember(lr, b2=b2, eps=eps, weight_decay=wd)
  step = _sparse_step(optimizer)
  table = jnp.asarray(data['params0'])
  state = optimizer.init(table)
  want = data['params0'].astype(np.float64)
  row, col, scale = np.zeros(case['V']), np.zeros(case['D']), 0.0
  untouched_somewhere = False
  for t in range(1, case['T'] + 1):
    grad = data['grads'][t - 1].astype(np.float64)
    touched = np.abs(grad).sum(axis=1) > 0
    untouched_somewhere |= not touched.all()
    g2 = grad**2
    row = b2 * row + (1 - b2) * g2.mean(1)
    col = b2 * col + (1 - b2) * g2.mean(0)
    scale = b2 * scale + (1 - b2) * g2.mean()
    vhat = row[:, None] * col[None, :] / (max(scale, 1e-30) * (1 - b2**t))
    step_rows = lr * (grad / (np.sqrt(vhat) + eps) + wd * want)
    want = np.where(touched[:, None], want - step_rows, want)
    ids = np.flatnonzero(touched).astype(np.int32)
    before = np.asarray(table)
    table, state = step(table, state, ids, data['grads'][t - 1][ids])
    np.testing.assert_array_equal(np.asarray(table)[~touched], before[~touched])
    np.testing.assert_allclose(table, want, rtol=1e-5, atol=1e-6, err_msg=f'step {t}')
  assert untouched_somewhere


def test_repeated_ids_add_up_as_in_the_dense_gradient():
  rng = np.random.default_rng(1)
  ids = np.array([[4, 9, 4, 4], [0, 9, 7, 4]], np.int32)
  rows = rng.normal(size=ids.shape + (3,)).astype(np.float32)
  touched, valid = ember_optax.sum_duplicate_rows(IndexedRows(ids, rows), num_rows=10)
  assert touched.ids.shape == (8,) and touched.rows.shape == (8, 3)
  np.testing.assert_array_equal(touched.ids, [0, 4, 7, 9, 10, 10, 10, 10])
  np.testing.assert_array_equal(valid, [True] * 4 + [False] * 4)
  dense = np.zeros((10, 3), np.float32)
  np.add.at(dense, ids.reshape(-1), rows.reshape(-1, 3))
  np.testing.assert_allclose(touched.rows[:4], dense[[0, 4, 7, 9]], rtol=1e-6)
  np.testing.assert_array_equal(touched.rows[4:], 0)


def test_padding_ids_change_nothing():
  rng = np.random.default_rng(2)
  table = jnp.asarray(rng.normal(size=(50, 8)).astype(np.float32))
  ids = np.array([3, 3, 17, 42], np.int32)
  rows = rng.normal(size=(4, 8)).astype(np.float32)
  padded_ids = np.concatenate([ids, [-1, 50, 1000]]).astype(np.int32)
  padded_rows = np.concatenate([rows, rng.normal(size=(3, 8)).astype(np.float32)])
  optimizer = ember_optax.sparse_ember(1e-2, weight_decay=0.1)
  step = _sparse_step(optimizer)
  plain = step(table, optimizer.init(table), ids, rows)
  padded = step(table, optimizer.init(table), padded_ids, padded_rows)
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(padded), strict=True):
    np.testing.assert_array_equal(a, b)


def test_bfloat16_table_keeps_float32_statistics_and_follows_dense():
  rng = np.random.default_rng(3)
  table = jnp.asarray(rng.normal(size=(300, 32)), jnp.bfloat16)
  batches = [
    (ids, jnp.asarray(rng.normal(size=ids.shape + (32,)), jnp.bfloat16))
    for ids in (_zipf_ids(rng, 300, (64,)) for _ in range(20))
  ]
  sparse, dense = ember_optax.sparse_ember(1e-2), ember_optax.ember(1e-2)
  for s_table, s_state, d_table, _ in _run_both(sparse, dense, table, batches):
    assert s_table.dtype == jnp.bfloat16
    assert s_state.row.dtype == s_state.col.dtype == s_state.scale.dtype == jnp.float32
    # Duplicates are summed in float32 here, in bfloat16 by the dense scatter: a few bf16 ulps.
    np.testing.assert_allclose(
      np.asarray(s_table, np.float32), np.asarray(d_table, np.float32), atol=0.03
    )


def test_learning_rate_schedule_follows_the_step_count_as_dense_ember():
  rng = np.random.default_rng(4)
  schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-2, 5, 30)
  table = jnp.asarray(rng.normal(size=(100, 8)).astype(np.float32))
  batches = [
    (ids, rng.normal(size=ids.shape + (8,)).astype(np.float32))
    for ids in (_zipf_ids(rng, 100, (16,)) for _ in range(30))
  ]
  sparse, dense = ember_optax.sparse_ember(schedule), ember_optax.ember(schedule)
  for s_table, _, d_table, _ in _run_both(sparse, dense, table, batches):
    np.testing.assert_allclose(s_table, d_table, rtol=1e-5, atol=1e-6)
  first = next(_run_both(sparse, dense, table, batches[:1]))[0]
  np.testing.assert_array_equal(first, table)  # schedule(0) = 0, as in dense ember.


def _compiled_step(vocab, width, n_ids, weight_decay=0.0):
  optimizer = ember_optax.sparse_ember(1e-2, weight_decay=weight_decay)
  table = jax.ShapeDtypeStruct((vocab, width), jnp.float32)
  state = jax.eval_shape(optimizer.init, table)

  def step(table, state, ids, row_grads):
    updates, state = optimizer.update(IndexedRows(ids, row_grads), state, table)
    return ember_optax.apply_row_updates(table, updates), state

  ids = jax.ShapeDtypeStruct((n_ids,), jnp.int32)
  rows = jax.ShapeDtypeStruct((n_ids, width), jnp.float32)
  return jax.jit(step, donate_argnums=(0, 1)).lower(table, state, ids, rows).compile()


@pytest.mark.parametrize('weight_decay', [0.0, 0.1])
def test_donated_step_updates_table_and_statistics_in_place(weight_decay):
  vocab, width, n_ids = 1 << 18, 32, 256
  compiled = _compiled_step(vocab, width, n_ids, weight_decay)
  text = compiled.as_text()
  # No copy of anything with V rows: the table, row statistic and last steps are written in place.
  assert not re.search(rf'= [a-z0-9]+\[{vocab}[\],][^=]*\bcopy\(', text), text
  memory = compiled.memory_analysis()
  state_bytes = vocab * width * 4 + 2 * vocab * 4 + width * 4 + 8
  assert memory.alias_size_in_bytes >= state_bytes
  # Scratch is the touched rows' work, nothing of the table's size.
  assert memory.temp_size_in_bytes < 64 * n_ids * width * 4 < vocab * width * 4


def test_state_layout_and_row_statistic():
  state = ember_optax.sparse_ember(1e-3).init(jnp.zeros((1000, 64), jnp.bfloat16))
  assert state.row.shape == state.last_step.shape == (1000,)
  assert state.col.shape == (64,) and state.scale.shape == () and state.count.shape == ()
  assert state.last_step.dtype == jnp.int32 and state.row.dtype == jnp.float32
  state = state._replace(count=jnp.array(5), row=jnp.ones(1000), last_step=jnp.arange(1000) % 6)
  row = ember_optax.sparse_ember_row_statistic(state, b2=0.5)
  np.testing.assert_allclose(row[:6], 0.5 ** (5 - np.arange(6)), rtol=1e-6)


def test_bad_input_is_refused_before_anything_changes():
  with pytest.raises(ValueError, match='b2=1.5'):
    ember_optax.sparse_ember(1e-2, b2=1.5)
  with pytest.raises(ValueError, match='learning_rate=-1'):
    ember_optax.sparse_ember(-1)
  with pytest.raises(ValueError, match='weight_decay'):
    ember_optax.sparse_ember(1e-2, weight_decay=-0.1)
  optimizer = ember_optax.sparse_ember(1e-2)
  with pytest.raises(ValueError, match=r'shape \(2, 3, 4\).*two axes'):
    optimizer.init(jnp.zeros((2, 3, 4)))
  with pytest.raises(TypeError, match='dtype int32'):
    optimizer.init(jnp.zeros((5, 4), jnp.int32))
  state = optimizer.init(jnp.zeros((10, 4)))
  with pytest.raises(TypeError, match='IndexedRows'):
    optimizer.update(jnp.zeros((10, 4)), state)
  with pytest.raises(ValueError, match=r'\(3, 5\).*\(3, 4\)'):
    optimizer.update(IndexedRows(jnp.arange(3), jnp.zeros((3, 5))), state)
  with pytest.raises(TypeError, match='integers'):
    optimizer.update(IndexedRows(jnp.zeros(3), jnp.zeros((3, 4))), state)
  decaying = ember_optax.sparse_ember(1e-2, weight_decay=0.1)
  with pytest.raises(ValueError, match='needs the table'):
    decaying.update(IndexedRows(jnp.arange(3), jnp.zeros((3, 4))), state)
