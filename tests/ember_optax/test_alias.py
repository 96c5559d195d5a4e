"""ember_partition: Ember on the tables beside any body optimizer; inject_hyperparams; Muon."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ember_optax

VOCAB, WIDTH = 97, 16


def _params():
  key = jax.random.PRNGKey(0)
  k1, k2, k3, k4 = jax.random.split(key, 4)
  return {
    'embed': {'embedding': jax.random.normal(k1, (VOCAB, WIDTH))},
    'mlp': {
      'kernel': jax.random.normal(k2, (WIDTH, 2 * WIDTH)) * 0.1,
      'bias': jnp.zeros(2 * WIDTH),
    },
    'norm': {'scale': jnp.ones(2 * WIDTH)},
    'lm_head': {'kernel': jax.random.normal(k3, (2 * WIDTH, VOCAB)) * 0.1},
    'per_layer': {'input_embedding': jax.random.normal(k4, (VOCAB, 2, 4))},
  }


def _loss(params, tokens):
  per_layer = params['per_layer']['input_embedding'][tokens].sum((-2, -1))
  x = params['embed']['embedding'][tokens] + per_layer[..., None]
  h = jnp.tanh(x @ params['mlp']['kernel'] + params['mlp']['bias']) * params['norm']['scale']
  logits = h @ params['lm_head']['kernel']
  return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:]).mean()


def _tokens():
  return jax.random.randint(jax.random.PRNGKey(1), (8, 12), 0, VOCAB)


def _train(optimizer, steps=5, jit_init=False):
  params, tokens = _params(), _tokens()
  state = (jax.jit(optimizer.init) if jit_init else optimizer.init)(params)

  @jax.jit
  def step(params, state):
    loss, grads = jax.value_and_grad(_loss)(params, tokens)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  losses = []
  for _ in range(steps):
    params, state, loss = step(params, state)
    losses.append(float(loss))
  return params, state, losses


def _assert_trees_close(a, b, rtol=1e-5):
  # A learning rate injected as a traced array compiles to other float32 code than a constant
  # (contracted multiply-adds, a folded product); five steps of normalized updates carry those
  # ulps to about 2e-6 relative on some CPUs (AMD EPYC, jax 0.10.2). A wrong rate or statistic is
  # off by orders of magnitude more.
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=rtol, atol=1e-7), a, b)


@pytest.mark.parametrize('vocab_size', [VOCAB, None])
def test_inject_hyperparams_steps_under_jit_as_the_plain_optimizer(vocab_size):
  kwargs = {'vocab_size': vocab_size} if vocab_size else {}
  injected = optax.inject_hyperparams(ember_optax.ember_adamw)(3e-3, **kwargs)
  plain = ember_optax.ember_adamw(3e-3, **kwargs)
  got, state, losses = _train(injected)
  want, _, _ = _train(plain)
  _assert_trees_close(got, want)
  assert losses[-1] < losses[0]
  assert int(state.hyperparams['vocab_size']) == vocab_size if vocab_size else True
  # The per-layer (V, 2, 4) table is factored with the vocabulary as its row axis only when
  # vocab_size says so; by name alone it keeps the last two axes.
  tables = state.inner_state.inner_states['token_table'].inner_state[0]
  expected_col = (2, 4) if vocab_size else (VOCAB, 4)
  assert tables.col['per_layer']['input_embedding'].shape == expected_col


def test_inject_hyperparams_schedules_ember_numbers_and_changes_them_in_the_state():
  schedule = optax.linear_schedule(3e-3, 0.0, 5)
  injected = optax.inject_hyperparams(ember_optax.ember_adamw)(
    schedule, vocab_size=VOCAB, ember_learning_rate=1e-2
  )
  _, state, _ = _train(injected, steps=2)
  # The rate of the last step taken (the second, count 1).
  assert float(state.hyperparams['learning_rate']) == pytest.approx(float(schedule(1)))
  assert float(state.hyperparams['ember_learning_rate']) == pytest.approx(1e-2)


def test_init_under_jit_with_an_injected_vocab_size_names_static_args():
  injected = optax.inject_hyperparams(ember_optax.ember_adamw)(3e-3, vocab_size=VOCAB)
  with pytest.raises(TypeError, match=r"static_args=\('vocab_size',\)"):
    _train(injected, jit_init=True)
  static = optax.inject_hyperparams(ember_optax.ember_adamw, static_args=('vocab_size',))(
    3e-3, vocab_size=VOCAB
  )
  got, _, _ = _train(static, jit_init=True)
  want, _, _ = _train(ember_optax.ember_adamw(3e-3, vocab_size=VOCAB))
  _assert_trees_close(got, want)


def test_callables_under_inject_hyperparams_are_named_in_static_args():
  labels = functools.partial(ember_optax.token_table_labels, vocab_size=VOCAB)
  injected = optax.inject_hyperparams(ember_optax.ember_adamw, static_args=('labels',))(
    3e-3, labels=labels
  )
  got, _, _ = _train(injected)
  want, _, _ = _train(ember_optax.ember_adamw(3e-3, labels=labels))
  _assert_trees_close(got, want)


def test_ember_adamw_is_ember_partition_with_an_adamw_body():
  got, _, _ = _train(ember_optax.ember_adamw(3e-3, vocab_size=VOCAB, weight_decay=0.1))
  want, _, _ = _train(
    ember_optax.ember_partition(optax.adamw(3e-3, weight_decay=0.1), 3e-3, vocab_size=VOCAB)
  )
  jax.tree.map(np.testing.assert_array_equal, got, want)


def _body(tree):
  return {k: v for k, v in tree.items() if k not in ('embed', 'lm_head', 'per_layer')}


def test_muon_body_never_sees_a_table_and_steps_as_muon_on_the_body_alone():
  muon = optax.contrib.muon(0.02)
  optimizer = ember_optax.ember_partition(muon, 3e-3, vocab_size=VOCAB)
  params, tokens = _params(), _tokens()
  state = optimizer.init(params)
  grads = jax.grad(_loss)(params, tokens)
  updates, state = jax.jit(optimizer.update)(grads, state, params)

  body_state = state.inner_states[ember_optax.BODY_LABEL].inner_state
  body_leaves = jax.tree.leaves(body_state)
  # Muon's momentum has the body's leaves only: no (V, D) or (D, V) array anywhere in its state.
  assert all(VOCAB not in np.shape(leaf) for leaf in body_leaves)
  table_state = state.inner_states[ember_optax.TABLE_LABEL].inner_state[0]
  assert table_state.row['embed']['embedding'].shape == (VOCAB,)

  alone = optax.contrib.muon(0.02)
  want, _ = alone.update(_body(grads), alone.init(_body(params)), _body(params))
  _assert_trees_close(_body(updates), want, rtol=1e-5)
  # Its Adam fallback took the 1-D leaves: Adam's first step has the same size everywhere.
  adam_step = np.abs(np.asarray(updates['mlp']['bias']))
  assert np.allclose(adam_step, adam_step.mean(), rtol=1e-3)


def test_muon_body_trains():
  _, _, losses = _train(
    ember_optax.ember_partition(optax.contrib.muon(0.02), 1e-2, vocab_size=VOCAB), steps=20
  )
  assert losses[-1] < 0.8 * losses[0]


def test_update_routes_as_init_did():
  optimizer = ember_optax.ember_partition(optax.sgd(0.1), 1e-2, vocab_size=VOCAB)
  params = _params()
  state = optimizer.init(params)
  with pytest.raises(ValueError, match='gradient leaves'):
    optimizer.update({'embed': params['embed']}, state, params)


def test_labels_naming_no_table_are_refused_at_init():
  optimizer = ember_optax.ember_partition(
    optax.sgd(0.1), 1e-2, labels=lambda p: jax.tree.map(lambda _: 'body', p)
  )
  with pytest.raises(ValueError, match="labels no parameter 'token_table'"):
    optimizer.init(_params())
