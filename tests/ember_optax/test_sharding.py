"""``state_shardings`` and the sharding metadata of Ember's statistics (one device)."""

import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import optax
import pytest

import ember_optax
from ember_optax import state_shardings
from ember_optax._src import layout

V, D = 64, 16


def _params():
  return {
    'embed': {'embedding': jnp.zeros((V, D))},
    'dense': {'kernel': jnp.zeros((D, D)), 'bias': jnp.zeros((D,))},
    'stacked': {'embedding': jnp.zeros((3, V, D))},
  }


SPECS = {
  'embed': {'embedding': P('model', 'data')},
  'dense': {'kernel': P(None, 'model'), 'bias': P('model')},
  'stacked': {'embedding': P('layers', 'model')},
}


@pytest.mark.parametrize(
  ('axes', 'ndim', 'row', 'col', 'scale'),
  [
    (('v', 'd'), 2, ('v',), ('d',), ()),
    (('v',), 2, ('v',), (None,), ()),
    (('l', 'v', 'd'), 3, ('l', 'v'), ('l', 'd'), ('l',)),
    (('d',), 1, ('d',), (), ()),
    ((), 0, (), (), ()),
  ],
)
def test_statistic_axes(axes, ndim, row, col, scale):
  assert layout.statistic_axes(axes, ndim, 'row') == row
  assert layout.statistic_axes(axes, ndim, 'col') == col
  assert layout.statistic_axes(axes, ndim, 'scale') == scale


def test_statistic_axes_rejects_a_spec_longer_than_the_parameter():
  with pytest.raises(ValueError, match='does not fit'):
    layout.statistic_axes(('a', 'b', 'c'), 2, 'row')


def test_ember_state_shardings_follow_the_table_axes():
  state = jax.eval_shape(ember_optax.ember(1e-2).init, _params())
  shardings = state_shardings(state, SPECS)
  ember_state = shardings[0]
  assert ember_state.count == P()
  assert ember_state.row == {
    'embed': {'embedding': P('model')},
    'dense': {'kernel': P(None), 'bias': P('model')},
    'stacked': {'embedding': P('layers', 'model')},
  }
  assert ember_state.col == {
    'embed': {'embedding': P('data')},
    'dense': {'kernel': P('model'), 'bias': P()},
    'stacked': {'embedding': P('layers', None)},
  }
  assert ember_state.scale == {
    'embed': {'embedding': P()},
    'dense': {'kernel': P(), 'bias': P()},
    'stacked': {'embedding': P('layers')},
  }
  assert jax.tree.structure(shardings) == jax.tree.structure(state)


def test_ember_adamw_state_shardings_keep_masked_nodes():
  params = _params()
  optimizer = ember_optax.ember_adamw(1e-2, vocab_size=V)
  state = jax.eval_shape(optimizer.init, params)
  shardings = state_shardings(state, SPECS)
  assert jax.tree.structure(shardings) == jax.tree.structure(state)
  ember_state = shardings.inner_states['token_table'].inner_state[0]
  adam_state = shardings.inner_states['body'].inner_state[0]
  assert ember_state.row['embed']['embedding'] == P('model')
  assert isinstance(ember_state.row['dense']['kernel'], optax.MaskedNode)
  assert adam_state.mu['dense']['kernel'] == P(None, 'model')
  assert adam_state.nu['dense']['bias'] == P('model')
  assert isinstance(adam_state.mu['embed']['embedding'], optax.MaskedNode)
  assert adam_state.count == P()


def test_state_shardings_in_a_chain_and_for_a_single_array():
  optimizer = optax.chain(optax.clip_by_global_norm(1.0), ember_optax.ember(1e-2))
  state = jax.eval_shape(optimizer.init, jnp.zeros((V, D)))
  shardings = state_shardings(state, P('x', None))
  assert shardings[1][0].row == P('x')
  assert shardings[1][0].col == P(None)
  assert shardings[1][0].scale == P()


def test_named_shardings_are_ready_for_jit_and_device_put():
  mesh = jax.make_mesh((1, 1), ('data', 'model'), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  params = _params()
  specs = {**SPECS, 'stacked': {'embedding': P(None, 'model')}}
  optimizer = ember_optax.ember_adamw(1e-2, vocab_size=V)
  shardings = state_shardings(jax.eval_shape(optimizer.init, params), specs, mesh=mesh)
  assert all(isinstance(s, NamedSharding) for s in jax.tree.leaves(shardings))
  p_shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
  state = jax.jit(optimizer.init, out_shardings=shardings)(params)
  state = jax.device_put(state, shardings)
  grads = jax.tree.map(jnp.ones_like, params)
  step = jax.jit(
    lambda g, s, p: optimizer.update(g, s, p),
    in_shardings=(p_shardings, shardings, p_shardings),
    out_shardings=(p_shardings, shardings),
  )
  updates, state = step(grads, state, params)
  assert updates['embed']['embedding'].shape == (V, D)


class _LogicalModel(nn.Module):
  @nn.compact
  def __call__(self, tokens):
    init = nn.initializers.normal(0.02)
    embed = nn.Embed(V, D, embedding_init=nn.with_logical_partitioning(init, ('vocab', 'embed')))
    dense = nn.Dense(D, kernel_init=nn.with_logical_partitioning(init, ('embed', 'mlp')))
    return dense(embed(tokens))


RULES = (('vocab', 'model'), ('embed', 'data'), ('mlp', 'model'))


def test_linen_logical_axes_through_state_shardings():
  mesh = jax.make_mesh((1, 1), ('data', 'model'), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  tokens = jnp.zeros((2, 4), jnp.int32)
  boxed = jax.eval_shape(_LogicalModel().init, jax.random.key(0), tokens)['params']
  logical_specs = nn.get_partition_spec(boxed)
  optimizer = ember_optax.ember_adamw(1e-2, vocab_size=V)
  state = jax.eval_shape(optimizer.init, nn.unbox(boxed))
  logical = state_shardings(state, logical_specs)
  ember_state = logical.inner_states['token_table'].inner_state[0]
  assert ember_state.row['Embed_0']['embedding'] == P('vocab')
  assert ember_state.col['Embed_0']['embedding'] == P('embed')
  mesh_shardings = nn.logical_to_mesh_sharding(logical, mesh, RULES)
  row = mesh_shardings.inner_states['token_table'].inner_state[0].row['Embed_0']['embedding']
  assert row.spec == P('model')
  adam = mesh_shardings.inner_states['body'].inner_state[0]
  assert adam.mu['Dense_0']['kernel'].spec == P('data', 'model')


def test_linen_boxed_train_state_gets_statistic_partition_specs():
  """The Flax guide's flow: ``nn.get_partition_spec`` of an abstract boxed TrainState."""
  mesh = jax.make_mesh((1, 1), ('data', 'model'), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  tokens = jnp.zeros((2, 4), jnp.int32)
  optimizer = ember_optax.ember_adamw(1e-2, vocab_size=V)

  def create(key):
    variables = _LogicalModel().init(key, tokens)
    return train_state.TrainState.create(
      apply_fn=_LogicalModel().apply, params=variables['params'], tx=optimizer
    )

  abstract = jax.eval_shape(create, jax.random.key(0))
  specs = nn.get_partition_spec(abstract)
  ember_specs = specs.opt_state.inner_states['token_table'].inner_state[0]
  assert ember_specs.row['Embed_0']['embedding'] == P('vocab')
  assert ember_specs.col['Embed_0']['embedding'] == P('embed')
  assert ember_specs.scale['Embed_0']['embedding'] == P()
  shardings = nn.logical_to_mesh_sharding(specs, mesh, RULES)
  state = jax.jit(create, out_shardings=shardings)(jax.random.key(0))

  def train_step(state, tokens):
    loss = lambda p: jnp.mean(state.apply_fn({'params': p}, tokens) ** 2)
    return state.apply_gradients(grads=jax.grad(loss)(state.params))

  step = jax.jit(train_step, in_shardings=(shardings, None), out_shardings=shardings)
  state = step(step(state, tokens), tokens)
  row = state.opt_state.inner_states['token_table'].inner_state[0].row['Embed_0']['embedding']
  assert row.names == ('vocab',)
  assert row.value.shape == (V,)
