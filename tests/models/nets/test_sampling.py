"""Sampling with the KV cache: shapes, keys, and the tokens the whole-sequence model would pick."""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.nets import sampling
from models.nets.gpt import GPT, GPTConfig

CONFIG = GPTConfig(vocab_size=61, max_len=20, d_model=32, n_layers=2, n_heads=2, d_ff=64)


@pytest.fixture(scope='module')
def model():
  return GPT(CONFIG, rngs=nnx.Rngs(0))


def test_a_cold_sample_is_the_whole_model_greedy_continuation(model):
  prompts = jax.random.randint(jax.random.key(0), (4, 6), 0, CONFIG.vocab_size)
  # At a tiny temperature, sampling is the argmax.
  completions = sampling.generate(model, prompts, jax.random.key(1), 5, temperature=1e-6)
  tokens = prompts
  for _ in range(5):
    next_token = jnp.argmax(model(tokens)[:, -1], axis=-1)
    tokens = jnp.concatenate([tokens, next_token[:, None]], axis=1)
  np.testing.assert_array_equal(completions, tokens[:, 6:])


def test_keys_decide_the_draw(model):
  graphdef, params = nnx.split(model, nnx.Param)
  sample = sampling.sampler(graphdef, 8)
  prompts = jnp.zeros((16, 4), jnp.int32)
  first = sample(params, prompts, jax.random.key(0))
  assert first.shape == (16, 8) and first.dtype == jnp.int32
  np.testing.assert_array_equal(first, sample(params, prompts, jax.random.key(0)))
  assert not np.array_equal(first, sample(params, prompts, jax.random.key(1)))


def test_too_long_a_completion_is_refused(model):
  with pytest.raises(ValueError, match='max_len'):
    sampling.generate(model, jnp.zeros((1, 16), jnp.int32), jax.random.key(0), 5)
