"""The sparse row-wise peer equals dense row-wise RMSprop on the same gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import ember_optax
from models.optim import rowwise


def test_sparse_rowwise_equals_dense_rowwise_with_rows_untouched_for_many_steps():
  rng = np.random.default_rng(0)
  vocab, width = 500, 8
  table = jnp.asarray(rng.normal(size=(vocab, width)).astype(np.float32))
  sparse, dense = rowwise.sparse_rowwise(1e-2), rowwise.rowwise(1e-2, vocab_size=vocab)

  @jax.jit
  def sparse_step(table, state, ids, rows):
    updates, state = sparse.update(ember_optax.IndexedRows(ids, rows), state, table)
    return ember_optax.apply_row_updates(table, updates), state

  @jax.jit
  def dense_step(table, state, ids, rows):
    grad = jnp.zeros_like(table).at[ids].add(rows)
    updates, state = dense.update(grad, state, table)
    return optax.apply_updates(table, updates), state

  s_table, s_state, d_table, d_state = table, sparse.init(table), table, dense.init(table)
  for t in range(200):
    ids = np.minimum(rng.zipf(1.3, size=32) - 1, vocab - 1).astype(np.int32)
    ids = ids % 10 if 10 <= t < 199 else ids  # Most rows wait 189 steps, then some come back.
    rows = rng.normal(size=(32, width)).astype(np.float32)
    s_table, s_state = sparse_step(s_table, s_state, ids, rows)
    d_table, d_state = dense_step(d_table, d_state, ids, rows)
    np.testing.assert_allclose(s_table, d_table, rtol=1e-5, atol=2e-6, err_msg=f'step {t}')
  moved = np.abs(np.asarray(s_table) - np.asarray(table)).max(axis=1) > 0
  assert moved[10:].any()
