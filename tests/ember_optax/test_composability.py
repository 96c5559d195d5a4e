"""Ember composed with what Optax users chain it with."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ember_optax


def _params():
  key_table, key_bias = jax.random.split(jax.random.PRNGKey(0))
  return {
    'table': jax.random.normal(key_table, (32, 8)),
    'bias': jax.random.normal(key_bias, (8,)),
  }


def _loss(params):
  return jnp.sum((params['table'] - 1.0) ** 2) + jnp.sum(params['bias'] ** 2)


def _run(optimizer, params, steps, loss=_loss):
  state = optimizer.init(params)

  @jax.jit
  def step(params, state):
    grads = jax.grad(loss)(params)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(steps):
    params, state = step(params, state)
  return params, state


def test_jit_does_not_recompile_on_later_steps():
  optimizer = ember_optax.ember(1e-2)
  params = _params()
  traces = []

  @jax.jit
  def step(params, state):
    traces.append(None)  # Runs only while tracing.
    updates, state = optimizer.update(jax.grad(_loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  state = optimizer.init(params)
  for _ in range(3):
    params, state = step(params, state)
  assert len(traces) == 1


def test_scan_matches_python_loop():
  optimizer = ember_optax.ember(1e-2)
  params = _params()

  def body(carry, _):
    params, state = carry
    updates, state = optimizer.update(jax.grad(_loss)(params), state, params)
    return (optax.apply_updates(params, updates), state), None

  (scanned, _), _ = jax.lax.scan(body, (params, optimizer.init(params)), length=5)
  looped, _ = _run(optimizer, params, 5)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6), scanned, looped)


def test_lax_cond_accepts_both_branches():
  optimizer = ember_optax.ember(1e-2)
  params = _params()
  state = optimizer.init(params)
  grads = jax.grad(_loss)(params)

  @jax.jit
  def maybe_update(flag, state):
    return jax.lax.cond(flag, lambda s: optimizer.update(grads, s, params)[1], lambda s: s, state)

  assert int(maybe_update(True, state)[0].count) == 1
  assert int(maybe_update(False, state)[0].count) == 0


def test_extra_keyword_arguments_are_ignored():
  params = _params()
  grads = jax.grad(_loss)(params)
  for optimizer in (ember_optax.scale_by_ember(), ember_optax.ember(1e-2)):
    state = optimizer.init(params)
    with_extra, _ = optimizer.update(grads, state, params, value=1.0, key=None)
    plain, _ = optimizer.update(grads, state, params)
    jax.tree.map(np.testing.assert_array_equal, with_extra, plain)


def test_chain_with_gradient_clipping_clips_first():
  params = _params()
  big = jax.tree.map(lambda p: 1e6 * jnp.ones_like(p), params)
  clip = optax.clip_by_global_norm(1.0)
  chained = optax.chain(clip, ember_optax.ember(1e-2))
  state = chained.init(params)
  updates, state = chained.update(big, state, params)
  clipped, _ = clip.update(big, clip.init(params))
  ember_state = state[1][0]
  expected_col = 0.001 * jnp.mean(clipped['table'] ** 2, axis=0)
  np.testing.assert_allclose(ember_state.col['table'], expected_col, rtol=1e-5)


def test_inject_hyperparams_gives_same_updates():
  params = _params()
  plain = ember_optax.ember(learning_rate=3e-2, b2=0.95, weight_decay=0.1)
  injected = optax.inject_hyperparams(ember_optax.ember)(
    learning_rate=3e-2, b2=0.95, weight_decay=0.1
  )
  expected, _ = _run(plain, params, 4)
  got, state = _run(injected, params, 4)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5), got, expected)
  assert float(state.hyperparams['learning_rate']) == pytest.approx(3e-2)


def test_multi_steps_accumulates_gradients():
  params = _params()
  grads = [jax.tree.map(lambda p, k=k: (k + 1.0) * jnp.ones_like(p), params) for k in range(2)]
  accumulated = optax.MultiSteps(ember_optax.ember(1e-2), every_k_schedule=2)
  state = accumulated.init(params)
  first, state = accumulated.update(grads[0], state, params)
  assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(first))
  second, _ = accumulated.update(grads[1], state, params)
  mean_grad = jax.tree.map(lambda a, b: (a + b) / 2, *grads)
  inner = ember_optax.ember(1e-2)
  expected, _ = inner.update(mean_grad, inner.init(params), params)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6), second, expected)


def test_apply_if_finite_skips_nan_steps():
  params = _params()
  optimizer = optax.apply_if_finite(ember_optax.ember(1e-2), max_consecutive_errors=3)
  state = optimizer.init(params)
  good = jax.grad(_loss)(params)
  _, state = optimizer.update(good, state, params)
  bad = jax.tree.map(lambda g: g.at[0].set(jnp.nan), good)
  updates, new_state = optimizer.update(bad, state, params)
  new_params = optax.apply_updates(params, updates)
  jax.tree.map(np.testing.assert_array_equal, new_params, params)
  jax.tree.map(np.testing.assert_array_equal, new_state.inner_state, state.inner_state)
  assert int(new_state.notfinite_count) == 1


def test_tree_map_params_treats_factored_statistics_as_non_params():
  # map_params is how users derive state shardings from param shardings: only
  # param-shaped state trees get `f`, and Ember keeps none.
  params = _params()
  optimizer = ember_optax.ember(1e-2)
  state = optimizer.init(params)
  mapped = optax.tree.map_params(
    optimizer, lambda p: 'param-like', state, transform_non_params=lambda _: 'other'
  )
  assert 'param-like' not in jax.tree.leaves(mapped)
  assert mapped[0].row == mapped[0].col == 'other'


def test_a_partition_group_without_tables_steps_like_the_rest():
  # Ember's group gets a tree of optax's masked nodes, without a single leaf.
  params = _params()
  labels = jax.tree.map(lambda _: 'adamw', params)
  transforms = {'ember': ember_optax.ember(1e-2), 'adamw': optax.adamw(1e-2)}
  optimizer = optax.partition(transforms, labels)
  got, _ = _run(optimizer, params, 3)
  want, _ = _run(optax.adamw(1e-2), params, 3)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6), got, want)


def test_transposed_head_gets_the_same_treatment():
  # The rule is symmetric under transposition: a (D, V) Dense kernel works as is.
  grad = jax.random.normal(jax.random.PRNGKey(2), (32, 8))
  optimizer = ember_optax.scale_by_ember()
  upd, _ = optimizer.update(grad, optimizer.init(grad))
  upd_t, _ = optimizer.update(grad.T, optimizer.init(grad.T))
  np.testing.assert_allclose(upd, upd_t.T, rtol=1e-6)


def test_schedules_as_learning_rates():
  schedule = optax.linear_schedule(1e-2, 0.0, transition_steps=2)
  optimizer = ember_optax.ember(schedule)
  params = _params()
  state = optimizer.init(params)
  grads = jax.grad(_loss)(params)
  sizes = []
  for _ in range(3):
    updates, state = optimizer.update(grads, state, params)
    sizes.append(float(jnp.abs(updates['table']).max()))
  assert sizes[0] > sizes[1] > 0 and sizes[2] == 0


def _converges(loss, params, optimizer, steps, tolerance):
  final, _ = _run(optimizer, params, steps, loss)
  assert float(loss(final)) < tolerance


def test_converges_on_quadratic_bowl():
  loss = lambda p: jnp.sum(jnp.array([1.0, 10.0]) * p['x'] ** 2)  # noqa: E731
  _converges(loss, {'x': jnp.array([3.0, -2.0])}, ember_optax.ember(0.05), 500, 1e-3)


def test_converges_on_rosenbrock():
  def rosenbrock(p):
    x, y = p['xy'][0], p['xy'][1]
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2

  # Without momentum, progress along the curved valley is slow; 29 -> < 0.01.
  schedule = optax.cosine_decay_schedule(0.01, 5000)
  _converges(rosenbrock, {'xy': jnp.array([-1.0, 1.5])}, ember_optax.ember(schedule), 5000, 1e-2)


def test_converges_on_matrix_quadratic():
  key_a, key_b = jax.random.split(jax.random.PRNGKey(3))
  # Well conditioned (singular values near 1), so the minimum, 0, is reached.
  a = jax.random.normal(key_a, (24, 24)) * 0.1 / 24**0.5 + jnp.eye(24)
  target = jax.random.normal(key_b, (24, 16))
  loss = lambda p: jnp.mean((a @ p['w'] - target) ** 2)  # noqa: E731
  schedule = optax.cosine_decay_schedule(0.02, 1000)
  _converges(loss, {'w': jnp.zeros((24, 16))}, ember_optax.ember(schedule), 1000, 1e-8)
