"""The reference GPT: shapes, causality, the unigram bias, its token tables, the presets."""

from __future__ import annotations

import dataclasses

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ember_optax
from models.nets.gpt import GPT, GPTConfig, count_params, table_labels, token_table_paths
from models.training.presets import PRESETS


@pytest.mark.parametrize('tie', [False, True])
def test_gpt_shapes_and_causality(tie):
  cfg = GPTConfig(
    vocab_size=300, max_len=16, d_model=32, n_layers=2, n_heads=4, d_ff=64, tie_embeddings=tie
  )
  model = GPT(cfg, rngs=nnx.Rngs(0))
  forward = nnx.jit(lambda model, tokens: model(tokens))  # One compile instead of op by op.
  tokens = jnp.arange(2 * 16).reshape(2, 16) % 300
  logits = forward(model, tokens)
  assert logits.shape == (2, 16, 300)
  # Changing the last token must not change the logits of earlier positions.
  changed = forward(model, tokens.at[:, -1].set(7))
  np.testing.assert_allclose(logits[:, :-1], changed[:, :-1], atol=1e-5)
  params = nnx.state(model, nnx.Param)
  assert ('lm_head' in params) != tie


def test_logit_bias_sets_the_untrained_models_prediction():
  cfg = GPTConfig(vocab_size=300, max_len=8, d_model=32, n_layers=1, n_heads=4, d_ff=64)
  prior = jax.nn.log_softmax(jax.random.normal(jax.random.key(0), (300,)))
  model = GPT(cfg, rngs=nnx.Rngs(0), logit_bias_init=prior)
  # Zero the head: the logits are then the bias alone, at every position.
  model.lm_head.kernel[...] = jnp.zeros_like(model.lm_head.kernel[...])
  logits = model(jnp.zeros((1, 8), jnp.int32))
  np.testing.assert_allclose(logits[0, 3], prior, rtol=1e-6)
  with pytest.raises(ValueError, match='shape'):
    GPT(cfg, rngs=nnx.Rngs(0), logit_bias_init=jnp.zeros(299))
  with pytest.raises(ValueError, match='logit_bias is False'):
    GPT(dataclasses.replace(cfg, logit_bias=False), rngs=nnx.Rngs(0), logit_bias_init=prior)


def _table_paths(params, labels) -> set[str]:
  """The ``a/b`` paths labelled ``"token_table"``."""
  flat = jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(labels))
  return {
    jax.tree_util.keystr(p, simple=True, separator='/')
    for p, label in flat
    if label == ember_optax.TABLE_LABEL
  }


@pytest.mark.parametrize('tie', [False, True])
def test_library_finds_the_models_token_tables(tie):
  """ember_optax's detection, by name and by vocabulary size, finds the model's own tables.

  Neither takes ``pos_embed`` (positions, not tokens) or the head's bias.
  """
  for name in ('tiny', 'small'):
    cfg = dataclasses.replace(
      PRESETS[name].model, vocab_size=PRESETS[name].vocab_size, tie_embeddings=tie
    )
    params = nnx.state(GPT(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    ours = _table_paths(params, table_labels(params, cfg))
    theirs = _table_paths(params, ember_optax.token_table_labels(params, vocab_size=cfg.vocab_size))
    assert ours == token_table_paths(cfg)
    assert theirs == ours, f'{name}: {sorted(theirs)}'
    by_name = _table_paths(params, ember_optax.token_table_labels(params))
    assert by_name == ours, f'{name}: {sorted(by_name)}'


def test_presets_keep_body_dims_off_the_vocab_size():
  """Detection by shape would mistake a body weight with a vocab-sized axis for a table."""
  for name, p in PRESETS.items():
    m = p.model
    assert p.vocab_size not in {m.max_len, m.d_model, m.d_ff, 3 * m.d_model}, name
    assert p.seq_len <= m.max_len, name
    assert p.lr > 0, name


def test_count_params_needs_only_shapes():
  config = dataclasses.replace(PRESETS['tiny'].model, vocab_size=512)
  model = GPT(config, rngs=nnx.Rngs(0))
  abstract = nnx.eval_shape(lambda: GPT(config, rngs=nnx.Rngs(0)))
  assert count_params(abstract) == count_params(model) > 0


@pytest.mark.parametrize('tie', [False, True])
def test_prefill_then_decode_gives_the_whole_sequence_logits(tie):
  config = GPTConfig(vocab_size=97, max_len=16, d_model=32, n_layers=2, n_heads=4, d_ff=64)
  model = GPT(dataclasses.replace(config, tie_embeddings=tie), rngs=nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(1), (3, 16), 0, 97)
  whole = model(tokens)
  logits, cache = model.prefill(tokens[:, :10])
  np.testing.assert_allclose(logits, whole[:, 9], atol=1e-5)
  for index in range(10, 16):
    logits, cache = model.decode(tokens[:, index], cache, jnp.asarray(index))
    np.testing.assert_allclose(logits, whole[:, index], atol=1e-5)
  # Position by position from an empty cache, too.
  cache = model.init_cache(3)
  for index in range(4):
    logits, cache = model.decode(tokens[:, index], cache, jnp.asarray(index))
    np.testing.assert_allclose(logits, whole[:, index], atol=1e-5)
