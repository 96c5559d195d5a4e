"""The GPT's hashed n-gram table: its hash, the model with and without it, and its train step."""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ember_optax
from models.nets import ngram
from models.nets.gpt import GPT, GPTConfig
from models.training import step as step_lib

CONFIG = GPTConfig(vocab_size=256, max_len=16, d_model=32, n_layers=2, n_heads=4, d_ff=64)
ROWS = 1 << 14


def _tokens(seed=0, shape=(4, 16)):
  return jax.random.randint(jax.random.PRNGKey(seed), shape, 0, CONFIG.vocab_size)


def test_ids_hash_each_orders_ngram_ending_at_the_position():
  tokens = jnp.array([[3, 1, 4, 1, 5, 9, 2, 6], [0, 3, 1, 4, 1, 5, 9, 2]])
  ids = ngram.ngram_ids(tokens, ROWS, (2, 3))
  assert ids.shape == (2, 8, 2) and ids.dtype == jnp.int32
  # Too few tokens before a position: no n-gram of that order.
  assert ids[0, 0].tolist() == [-1, -1] and ids[0, 1, 1] == -1 and ids[0, 1, 0] >= 0
  valid = ids[ids >= 0]
  assert bool(jnp.all(valid < ROWS))
  # The same n-gram hashes to the same row wherever it is: (3, 1) and (3, 1, 4) in both rows.
  assert ids[0, 1, 0] == ids[1, 2, 0] and ids[0, 2, 1] == ids[1, 3, 1]
  # A bigram and a trigram ending in the same tokens differ, and (1, 4) != (4, 1).
  assert ids[0, 2, 0] != ids[0, 2, 1] and ids[0, 2, 0] != ids[0, 3, 0]
  # Spread over the table: 1,000 random bigrams use many distinct rows.
  spread = ngram.ngram_ids(_tokens(1, (1, 1001)) * 0 + jnp.arange(1001), ROWS, (2,))
  assert len(np.unique(np.asarray(spread[0, 1:, 0]))) > 950


def test_bad_orders_and_rows_are_refused():
  with pytest.raises(ValueError, match='distinct orders from 2 to 4'):
    ngram.NgramConfig(rows=8, orders=(1, 2))
  with pytest.raises(ValueError, match='distinct orders'):
    ngram.NgramConfig(rows=8, orders=(2, 2))
  with pytest.raises(ValueError, match='at least 1 row'):
    ngram.NgramConfig(rows=0)


def test_without_a_table_the_model_is_unchanged_and_with_one_it_starts_the_same():
  tokens = _tokens()
  plain = GPT(CONFIG, rngs=nnx.Rngs(0))
  with_table = GPT(CONFIG, rngs=nnx.Rngs(0), ngram=ngram.NgramConfig(ROWS))
  assert plain.ngram is None
  plain_params = nnx.state(plain, nnx.Param)
  table_params = nnx.state(with_table, nnx.Param)
  del table_params['ngram']
  for a, b in zip(jax.tree.leaves(plain_params), jax.tree.leaves(table_params), strict=True):
    np.testing.assert_array_equal(a, b)
  # Zero rows at initialization: the same logits.
  np.testing.assert_allclose(with_table(tokens), plain(tokens), atol=1e-6)
  # The table is no nnx.Param: the model's optimizer never sees it.
  assert not any(ROWS in np.shape(leaf) for leaf in jax.tree.leaves(table_params))
  with pytest.raises(ValueError, match='without an n-gram table'):
    plain(tokens, jnp.zeros(tokens.shape + (2, CONFIG.d_model)))
  with pytest.raises(ValueError, match='incremental decoding'):
    with_table.prefill(tokens)


def _train(table_optimizer, steps=6):
  model = GPT(CONFIG, rngs=nnx.Rngs(0), ngram=ngram.NgramConfig(ROWS))
  graphdef, params, tables = nnx.split(model, nnx.Param, ngram.NgramTable)
  table = tables['ngram']['table'][...]
  optimizer = optax.adamw(3e-3)
  step = jax.jit(step_lib.ngram_train_step(graphdef, optimizer, table_optimizer))
  opt_state, table_state = optimizer.init(params), table_optimizer.init(table)
  losses = []
  for seed in range(steps):
    tokens = _tokens(seed % 2, (4, 17))
    params, opt_state, table, table_state, loss = step(
      params, opt_state, tables, table, table_state, tokens[:, :-1], tokens[:, 1:]
    )
    losses.append(float(loss))
  return params, table, losses, (graphdef, params, tables)


def test_train_step_with_sparse_ember_equals_dense_ember_on_the_table():
  sparse_params, sparse_table, sparse_losses, _ = _train(ember_optax.sparse_ember(1e-2))
  dense_params, dense_table, dense_losses, _ = _train(ember_optax.ember(1e-2))
  np.testing.assert_allclose(sparse_losses, dense_losses, rtol=1e-5)
  np.testing.assert_allclose(sparse_table, dense_table, rtol=1e-4, atol=1e-6)
  # AdamW on the body turns float32 round-off in near-zero gradients into steps of ~1e-6.
  for a, b in zip(jax.tree.leaves(sparse_params), jax.tree.leaves(dense_params), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  assert sparse_losses[-1] < sparse_losses[0]
  touched = np.abs(np.asarray(sparse_table)).max(axis=1) > 0
  assert 0 < touched.sum() < ROWS // 4  # Only the rows of the batches' n-grams moved.


def test_sparse_train_step_builds_no_table_sized_gradient():
  *_, (graphdef, params, tables) = _train(ember_optax.sparse_ember(1e-2), steps=0)
  table = tables['ngram']['table'][...]
  tokens = _tokens(0, (4, 17))

  def scratch(table_optimizer):
    optimizer = optax.adamw(3e-3)
    step = step_lib.ngram_train_step(graphdef, optimizer, table_optimizer)
    args = (params, optimizer.init(params), tables, table, table_optimizer.init(table))
    lowered = jax.jit(step, donate_argnums=(3, 4)).lower(*args, tokens[:, :-1], tokens[:, 1:])
    return lowered.compile().memory_analysis().temp_size_in_bytes

  table_bytes = ROWS * CONFIG.d_model * 4
  assert scratch(ember_optax.sparse_ember(1e-2)) < table_bytes // 4
  assert scratch(ember_optax.ember(1e-2)) >= table_bytes  # The dense path: the yardstick.
