"""sparse_ember in Flax linen and NNX models: row gradients only, never a dense table gradient."""

import functools

from flax import linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import ember_optax
from ember_optax import IndexedRows

# A table of many more rows than the vocabulary (a hashed n-gram table, say) beside an LM head.
ROWS, VOCAB, WIDTH, BATCH, LENGTH = 1 << 16, 512, 32, 4, 16


class LinenLM(nn.Module):
  """The table lives in the 'tables' collection, so the gradient of 'params' never includes it."""

  @nn.compact
  def __call__(self, tokens):
    init = nn.initializers.normal(1.0)
    table = self.variable(
      'tables', 'embedding', lambda: init(self.make_rng('params'), (ROWS, WIDTH))
    )
    # The gathered rows are what the loss is differentiated against.
    rows = self.perturb('rows', table.value[tokens])
    return nn.Dense(VOCAB, name='lm_head')(nn.gelu(nn.Dense(WIDTH)(rows)))


def _batches(steps, seed=0):
  rng = np.random.default_rng(seed)
  ids = np.minimum(rng.zipf(1.3, size=(steps, BATCH, LENGTH)) - 1, ROWS - 1)
  targets = rng.integers(0, VOCAB, size=(steps, BATCH, LENGTH))
  pairs = zip(ids, targets, strict=True)
  return [(jnp.asarray(t, jnp.int32), jnp.asarray(y, jnp.int32)) for t, y in pairs]


def _linen_setup():
  model = LinenLM()
  tokens = jnp.zeros((BATCH, LENGTH), jnp.int32)
  variables = model.init(jax.random.PRNGKey(0), tokens)
  # The rest of the model, LM head included, under Ember's partition with AdamW.
  body = ember_optax.ember_adamw(1e-2, vocab_size=VOCAB, ember_learning_rate=1e-2)
  return model, variables, body


def _loss(model, params, table, perturbations, tokens, targets):
  variables = {'params': params, 'tables': {'embedding': table}}
  if perturbations is not None:
    variables['perturbations'] = perturbations
  logits = model.apply(variables, tokens)
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def _linen_sparse_step(model, body, table_optimizer):
  @functools.partial(jax.jit, donate_argnums=(0, 1, 2, 3))
  def step(params, table, body_state, table_state, tokens, targets):
    zeros = {'rows': jnp.zeros(tokens.shape + (WIDTH,), table.dtype)}
    loss_fn = functools.partial(_loss, model)
    loss, (grads, row_grads) = jax.value_and_grad(loss_fn, argnums=(0, 2))(
      params, table, zeros, tokens, targets
    )
    updates, body_state = body.update(grads, body_state, params)
    params = optax.apply_updates(params, updates)
    row_updates, table_state = table_optimizer.update(
      IndexedRows(tokens, row_grads['rows']), table_state, table
    )
    table = ember_optax.apply_row_updates(table, row_updates)
    return params, table, body_state, table_state, loss

  return step


def test_linen_model_trains_its_table_from_row_gradients_as_dense_ember_would():
  model, variables, body = _linen_setup()
  params, table = variables['params'], variables['tables']['embedding']
  sparse = ember_optax.sparse_ember(1e-2)
  dense = ember_optax.ember(1e-2)
  sparse_step = _linen_sparse_step(model, body, sparse)

  @jax.jit
  def dense_step(params, table, body_state, table_state, tokens, targets):
    # The same loss with the table differentiated: JAX builds its dense (V, D) gradient.
    loss_fn = functools.partial(_loss, model)
    loss, (grads, table_grad) = jax.value_and_grad(loss_fn, argnums=(0, 1))(
      params, table, None, tokens, targets
    )
    updates, body_state = body.update(grads, body_state, params)
    table_updates, table_state = dense.update(table_grad, table_state, table)
    return (
      optax.apply_updates(params, updates),
      optax.apply_updates(table, table_updates),
      body_state,
      table_state,
      loss,
    )

  copy = functools.partial(jax.tree.map, jnp.copy)
  s = (copy(params), jnp.copy(table), body.init(params), sparse.init(table))
  d = (params, table, body.init(params), dense.init(table))
  for tokens, targets in _batches(8):
    *s, s_loss = sparse_step(*s, tokens, targets)
    *d, d_loss = dense_step(*d, tokens, targets)
    np.testing.assert_allclose(s_loss, d_loss, rtol=1e-5)
  np.testing.assert_allclose(s[1], d[1], rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(s[0]), jax.tree.leaves(d[0]), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  assert float(jnp.max(jnp.abs(s[1] - table))) > 0


def test_linen_train_step_builds_no_table_sized_gradient():
  model, variables, body = _linen_setup()
  params, table = variables['params'], variables['tables']['embedding']
  optimizer = ember_optax.sparse_ember(1e-2)
  tokens, targets = _batches(1)[0]
  compiled = (
    _linen_sparse_step(model, body, optimizer)
    .lower(params, table, body.init(params), optimizer.init(table), tokens, targets)
    .compile()
  )
  # Scratch for the body and the touched rows; a dense table gradient alone would be 8 MiB.
  assert compiled.memory_analysis().temp_size_in_bytes < ROWS * WIDTH * 4 // 4


class TableRows(nnx.Variable):
  """A table trained by sparse_ember: not an nnx.Param, so nnx.grad never builds its gradient."""


class NNXLM(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.table = TableRows(jax.random.normal(rngs.params(), (ROWS, WIDTH)))
    self.hidden = nnx.Linear(WIDTH, WIDTH, rngs=rngs)
    self.lm_head = nnx.Linear(WIDTH, VOCAB, rngs=rngs)

  def __call__(self, tokens, rows=None):
    # Training passes the gathered rows, to differentiate against them; inference gathers here.
    rows = self.table[...][tokens] if rows is None else rows
    return self.lm_head(nnx.gelu(self.hidden(rows)))


def test_nnx_model_trains_its_table_from_row_gradients():
  model = NNXLM(nnx.Rngs(0))
  before = jnp.copy(model.table[...])
  optimizer = nnx.Optimizer(model, ember_optax.ember_adamw(1e-2, vocab_size=VOCAB), wrt=nnx.Param)
  table_optimizer = ember_optax.sparse_ember(1e-2)
  table_state = table_optimizer.init(model.table[...])

  @nnx.jit(donate_argnums=(0, 1, 2))
  def step(model, optimizer, table_state, tokens, targets):
    def loss_fn(model, rows):
      logits = model(tokens, rows)
      return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    rows = model.table[...][tokens]
    loss, (grads, row_grads) = nnx.value_and_grad(loss_fn, argnums=(0, 1))(model, rows)
    optimizer.update(model, grads)
    updates, table_state = table_optimizer.update(
      IndexedRows(tokens, row_grads), table_state, model.table[...]
    )
    model.table[...] = ember_optax.apply_row_updates(model.table[...], updates)
    return table_state, loss

  losses = []
  batches = _batches(30, seed=1)
  for tokens, targets in batches[:1] * 30:
    table_state, loss = step(model, optimizer, table_state, tokens, targets)
    losses.append(float(loss))
  assert losses[-1] < 0.5 * losses[0], losses
  touched = np.zeros(ROWS, bool)
  touched[np.asarray(batches[0][0]).reshape(-1)] = True
  moved = np.abs(np.asarray(model.table[...]) - np.asarray(before)).max(axis=1) > 0
  np.testing.assert_array_equal(moved, touched)
  assert int(table_state.count) == 30
  # The body's optimizer state holds no statistics of the sparse table.
  assert not any(
    ROWS in np.shape(leaf) for leaf in jax.tree.leaves(nnx.state(optimizer, nnx.OptState))
  )
