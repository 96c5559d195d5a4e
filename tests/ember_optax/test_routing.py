"""Routing token tables to Ember and the rest to AdamW, on linen and NNX GPTs."""

from flax import nnx
import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ember_optax

VOCAB, WIDTH, LAYERS, LENGTH = 97, 16, 2, 8


class LinenBlock(nn.Module):
  """A pre-norm block with a per-layer value-embedding table, stacked by nn.scan."""

  @nn.compact
  def __call__(self, x, tokens):
    h = nn.LayerNorm()(x)
    h = nn.MultiHeadDotProductAttention(num_heads=2, name='attention')(
      h, mask=nn.make_causal_mask(tokens)
    )
    x = x + h + nn.Embed(VOCAB, WIDTH, name='value_embed')(tokens)
    h = nn.Dense(4 * WIDTH, name='mlp_in')(nn.LayerNorm()(x))
    return x + nn.Dense(WIDTH, name='mlp_out')(nn.gelu(h)), None


class LinenGPT(nn.Module):
  tie_embeddings: bool = False

  @nn.compact
  def __call__(self, tokens):
    embed = nn.Embed(VOCAB, WIDTH, name='wte')
    x = embed(tokens) + nn.Embed(LENGTH, WIDTH, name='wpe')(jnp.arange(tokens.shape[-1]))
    blocks = nn.scan(
      LinenBlock,
      variable_axes={'params': 0},
      split_rngs={'params': True},
      in_axes=nn.broadcast,
      length=LAYERS,
    )(name='blocks')
    x, _ = blocks(x, tokens)
    x = nn.LayerNorm(name='ln_f')(x)
    if self.tie_embeddings:
      return embed.attend(x)
    return nn.Dense(VOCAB, name='lm_head')(x)


def _tokens(seed=0):
  return jax.random.randint(jax.random.PRNGKey(seed), (4, LENGTH), 0, VOCAB)


def _cross_entropy(logits, tokens):
  return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:]).mean()


def _flat(labels):
  return {
    '/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path): label
    for path, label in jax.tree_util.tree_leaves_with_path(labels)
  }


@pytest.mark.parametrize('tie', [False, True])
def test_linen_gpt_tables_by_name(tie):
  params = LinenGPT(tie_embeddings=tie).init(jax.random.PRNGKey(0), _tokens())['params']
  labels = _flat(ember_optax.token_table_labels(params))
  tables = {path for path, label in labels.items() if label == 'token_table'}
  # wpe holds positions, not tokens: it stays with the body.
  expected = {'wte/embedding', 'blocks/value_embed/embedding'}
  if not tie:
    expected.add('lm_head/kernel')
  assert tables == expected
  assert params['blocks']['value_embed']['embedding'].shape == (LAYERS, VOCAB, WIDTH)
  assert all(
    labels[path] == 'body'
    for path in labels
    if 'attention' in path or 'mlp' in path or 'bias' in path or 'scale' in path
  )
  by_size = _flat(ember_optax.token_table_labels(params, vocab_size=VOCAB))
  assert {path for path, label in by_size.items() if label == 'token_table'} == expected


def test_linen_gpt_tables_by_vocab_size_whatever_their_names():
  params = LinenGPT().init(jax.random.PRNGKey(0), _tokens())['params']
  renamed = {
    'a': params['wte']['embedding'],
    'b': params['lm_head']['kernel'],
    'c': params['blocks']['mlp_in']['kernel'],
    'd': params['lm_head']['bias'],
  }
  labels = ember_optax.token_table_labels(renamed, vocab_size=VOCAB)
  assert labels == {'a': 'token_table', 'b': 'token_table', 'c': 'body', 'd': 'body'}


def test_linen_train_state_loop_decreases_loss():
  model = LinenGPT()
  tokens = _tokens()
  params = model.init(jax.random.PRNGKey(0), tokens)['params']
  state = train_state.TrainState.create(
    apply_fn=model.apply, params=params, tx=ember_optax.ember_adamw(1e-2, vocab_size=VOCAB)
  )

  @jax.jit
  def train_step(state, tokens):
    loss_fn = lambda p: _cross_entropy(state.apply_fn({'params': p}, tokens), tokens)  # noqa: E731
    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss

  losses = [float(train_step(state, tokens)[1])]
  for _ in range(30):
    state, loss = train_step(state, tokens)
  losses.append(float(loss))
  assert losses[-1] < 0.5 * losses[0]
  ember_state = state.opt_state.inner_states['token_table'].inner_state[0]
  assert ember_state.row['wte']['embedding'].shape == (VOCAB,)
  assert ember_state.col['lm_head']['kernel'].shape == (VOCAB,)
  assert ember_state.row['blocks']['value_embed']['embedding'].shape == (LAYERS, VOCAB)


class NNXGPT(nnx.Module):
  """Token and position tables, a block, an untied or tied head, as NNX models name them."""

  def __init__(self, tie: bool, rngs: nnx.Rngs):
    self.token_embed = nnx.Embed(VOCAB, WIDTH, rngs=rngs)
    self.pos_embed = nnx.Embed(LENGTH, WIDTH, rngs=rngs)
    self.norm = nnx.LayerNorm(WIDTH, rngs=rngs)
    self.mlp = nnx.Linear(WIDTH, WIDTH, rngs=rngs)
    self.lm_head = None if tie else nnx.Linear(WIDTH, VOCAB, use_bias=False, rngs=rngs)

  def __call__(self, tokens):
    x = self.token_embed(tokens) + self.pos_embed(jnp.arange(tokens.shape[-1]))
    x = self.norm(x + nnx.gelu(self.mlp(x)))
    return self.token_embed.attend(x) if self.lm_head is None else self.lm_head(x)


def _nnx_model(tie):
  return NNXGPT(tie, rngs=nnx.Rngs(0))


@pytest.mark.parametrize('tie', [False, True])
def test_nnx_gpt_optimizer_routes_tables_and_trains(tie):
  model = _nnx_model(tie)
  optimizer = nnx.Optimizer(model, ember_optax.ember_adamw(1e-2), wrt=nnx.Param)
  labels = _flat(ember_optax.token_table_labels(nnx.state(model, nnx.Param)))
  tables = {path.removesuffix('/value') for path, label in labels.items() if label == 'token_table'}
  expected = {'token_embed/embedding'}
  if not tie:
    expected.add('lm_head/kernel')
  assert tables == expected

  tokens = _tokens()

  @nnx.jit
  def train_step(model, optimizer, tokens):
    loss, grads = nnx.value_and_grad(lambda m: _cross_entropy(m(tokens), tokens))(model)
    optimizer.update(model, grads)
    return loss

  first = float(train_step(model, optimizer, tokens))
  for _ in range(30):
    loss = float(train_step(model, optimizer, tokens))
  assert loss < 0.5 * first
  ember_state = optimizer.opt_state.inner_states['token_table'].inner_state[0]
  assert ember_state.row['token_embed']['embedding'].shape == (VOCAB,)


def test_ember_adamw_hyperparameters_reach_each_group():
  params = {'embed': {'embedding': jnp.ones((VOCAB, 4))}, 'mlp': {'kernel': jnp.ones((4, 4))}}
  grads = jax.tree.map(jnp.ones_like, params)
  optimizer = ember_optax.ember_adamw(
    0.1, ember_learning_rate=0.01, weight_decay=0.0, ember_weight_decay=0.0
  )
  updates, _ = optimizer.update(grads, optimizer.init(params), params)
  # First steps of both are unit-sized sign steps scaled by each group's rate.
  np.testing.assert_allclose(updates['embed']['embedding'], -0.01, rtol=1e-4)
  np.testing.assert_allclose(updates['mlp']['kernel'], -0.1, rtol=1e-4)


def test_custom_predicate_and_labels_override_detection():
  params = {'table': jnp.ones((10, 3)), 'w': jnp.ones((3, 3))}
  labels = ember_optax.token_table_labels(params, is_token_table=lambda path, _: path == 'w')
  assert labels == {'table': 'body', 'w': 'token_table'}
  explicit = ember_optax.ember_adamw(1e-3, labels={'table': 'token_table', 'w': 'body'})
  state = explicit.init(params)
  assert state.inner_states['token_table'].inner_state[0].row['table'].shape == (10,)


def test_no_table_found_says_what_to_pass():
  params = {'dense': {'kernel': jnp.ones((4, 4))}}
  with pytest.raises(ValueError, match='found no token table.*named like one.*vocab_size='):
    ember_optax.ember_adamw(1e-3).init(params)
  with pytest.raises(ValueError, match=r'no leaf .* has an axis of vocab_size=50'):
    ember_optax.ember_adamw(1e-3, vocab_size=50).init(params)


def test_label_naming_no_transform_is_rejected_with_its_path():
  params = {'embed': {'embedding': jnp.ones((10, 3))}, 'w': jnp.ones((3, 3))}
  with pytest.raises(ValueError, match=r"'sgd' of parameter 'w' names no transform"):
    ember_optax.ember_adamw(1e-3, labels={'embed': {'embedding': 'token_table'}, 'w': 'sgd'})
  with pytest.raises(ValueError, match=r"'sgd' of parameter 'w' names no transform"):
    ember_optax.ember_adamw(
      1e-3, labels=lambda p: {'embed': {'embedding': 'token_table'}, 'w': 'sgd'}
    ).init(params)


def test_bad_body_hyperparameters_are_rejected_at_construction():
  with pytest.raises(ValueError, match=r'b1=1.5 is outside'):
    ember_optax.ember_adamw(1e-3, b1=1.5)
  with pytest.raises(ValueError, match=r'ember_b2|b2=2.0 is outside'):
    ember_optax.ember_adamw(1e-3, ember_b2=2.0)
