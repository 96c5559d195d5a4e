"""Tables of three or more axes: a known token axis keeps the statistics O(V + the rest)."""

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import pytest

import ember_optax

VOCAB, LAYERS, PER_LAYER = 257, 2, 8


def _grads(shape, steps, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), steps)
  # Some rows absent at each step, as tokens missing from a batch.
  return [
    jax.random.normal(k, shape) * (jax.random.uniform(k, shape[:1] + (1,) * (len(shape) - 1)) > 0.3)
    for k in keys
  ]


def _run(tx, params, grads):
  state = tx.init(params)
  step = jax.jit(tx.update)
  out = []
  for g in grads:
    updates, state = step(g, state, params)
    out.append(updates)
  return out, state


def _floats(state):
  return sum(x.size for x in jax.tree.leaves((state.row, state.col, state.scale)))


@pytest.mark.parametrize('how', ['vocab_size', 'token_axis', 'predicate'])
def test_per_layer_table_is_layers_of_vocab_by_width_tables(how):
  """Gemma 4's (V, L, P) table steps as L separate (V, P) tables under the 2-D rule."""
  kwargs = {
    'vocab_size': {'vocab_size': VOCAB},
    'token_axis': {'token_axis': 0},
    'predicate': {'token_axis': lambda path, leaf: 0 if path == 'per_layer' else None},
  }[how]
  params = {'per_layer': jnp.zeros((VOCAB, LAYERS, PER_LAYER))}
  grads = [{'per_layer': g} for g in _grads((VOCAB, LAYERS, PER_LAYER), 4)]
  updates, state = _run(ember_optax.scale_by_ember(**kwargs), params, grads)

  assert state.row['per_layer'].shape == (VOCAB, LAYERS)
  assert state.col['per_layer'].shape == (LAYERS, PER_LAYER)
  assert state.scale['per_layer'].shape == (LAYERS,)
  assert _floats(state) == LAYERS * (VOCAB + PER_LAYER + 1) == 532

  split = {f'layer{i}': params['per_layer'][:, i] for i in range(LAYERS)}
  split_grads = [{f'layer{i}': g['per_layer'][:, i] for i in range(LAYERS)} for g in grads]
  want, _ = _run(ember_optax.scale_by_ember(), split, split_grads)
  for got_step, want_step in zip(updates, want, strict=True):
    for layer in range(LAYERS):
      np.testing.assert_allclose(
        got_step['per_layer'][:, layer], want_step[f'layer{layer}'], rtol=1e-6, atol=1e-7
      )


def test_without_the_token_axis_a_3d_table_is_factored_over_its_last_two_axes():
  """The documented default (nn.scan-stacked tables): V (L + P + 1) statistics, as before."""
  state = ember_optax.scale_by_ember().init({'t': jnp.zeros((VOCAB, LAYERS, PER_LAYER))})
  assert _floats(state) == VOCAB * (LAYERS + PER_LAYER + 1) == 2827


def test_stacked_tables_and_heads_keep_their_last_two_axes_with_vocab_size():
  params = {'stacked': jnp.zeros((3, VOCAB, 16)), 'head': jnp.zeros((3, 16, VOCAB))}
  grads = [
    jax.tree.map(lambda p, g=g: g[: p.size].reshape(p.shape), params)
    for g in _grads((2 * 3 * VOCAB * 16,), 3)
  ]
  with_size, state = _run(ember_optax.scale_by_ember(vocab_size=VOCAB), params, grads)
  without, _ = _run(ember_optax.scale_by_ember(), params, grads)
  assert state.col['stacked'].shape == (3, 16) and state.col['head'].shape == (3, VOCAB)
  jax.tree.map(np.testing.assert_array_equal, with_size, without)


def test_ember_adamw_finds_and_factors_the_per_layer_table():
  params = {
    'embedder': {
      'input_embedding': jnp.zeros((VOCAB, 32)),
      'per_layer_input_embedding': jnp.zeros((VOCAB, LAYERS, PER_LAYER)),
      'per_layer_model_projection': {'w': jnp.zeros((32, LAYERS, PER_LAYER))},
    },
  }
  state = ember_optax.ember_adamw(1e-3, vocab_size=VOCAB).init(params)
  ember_state = state.inner_states[ember_optax.TABLE_LABEL].inner_state[0]
  assert ember_state.col['embedder']['per_layer_input_embedding'].shape == (LAYERS, PER_LAYER)
  assert isinstance(
    ember_state.row['embedder']['per_layer_model_projection']['w'], optax.MaskedNode
  )


def test_token_axis_out_of_range_names_the_parameter():
  with pytest.raises(ValueError, match=r"'emb/w'.*token_axis=3 is out of range"):
    ember_optax.scale_by_ember(token_axis=3).init({'emb': {'w': jnp.zeros((4, 5, 6))}})
  with pytest.raises(TypeError, match='token_axis=0.5 must be an integer'):
    ember_optax.scale_by_ember(token_axis=0.5)


@pytest.mark.parametrize('bad', [0, -3, 2.5, True])
def test_a_bad_vocab_size_is_refused_at_construction(bad):
  with pytest.raises(ValueError, match=f'vocab_size={bad!r} must be a positive integer'):
    ember_optax.ember_adamw(1e-3, vocab_size=bad)


def test_state_shardings_follow_the_token_axis():
  params = {'per_layer': jnp.zeros((VOCAB, LAYERS, PER_LAYER))}
  state = jax.eval_shape(ember_optax.scale_by_ember(vocab_size=VOCAB).init, params)
  specs = ember_optax.state_shardings(state, {'per_layer': P('vocab', 'layers', 'embed')})
  assert specs.row['per_layer'] == P('vocab', 'layers')
  assert specs.col['per_layer'] == P('layers', 'embed')
  assert specs.scale['per_layer'] == P('layers')


def test_a_state_made_with_another_token_axis_is_refused():
  params = {'t': jnp.zeros((VOCAB, LAYERS, PER_LAYER))}
  state = ember_optax.scale_by_ember().init(params)
  with pytest.raises(ValueError, match=r"column statistic of 't'.*token axis"):
    ember_optax.scale_by_ember(vocab_size=VOCAB).update(params, state, params)
