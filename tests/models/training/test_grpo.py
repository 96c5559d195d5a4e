"""GRPO's pieces: advantages, masks, log-probabilities and the loss's value and direction."""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from models.nets.gpt import GPT, GPTConfig
from models.training import grpo
from models.training import step as step_lib

CONFIG = GPTConfig(vocab_size=31, max_len=16, d_model=32, n_layers=1, n_heads=2, d_ff=64)


def test_advantages_are_relative_to_the_group():
  advantages = grpo.group_advantages(np.array([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]]))
  np.testing.assert_allclose(advantages[:4], [1, -1, -1, 1], atol=1e-3)
  np.testing.assert_array_equal(advantages[4:], 0)  # All equal: no signal.


def test_the_mask_ends_after_the_first_end_of_text():
  completions = jnp.array([[5, 9, 2, 9, 9], [9, 3, 3, 3, 3]])
  mask = grpo.completion_mask(completions, eot=9)
  np.testing.assert_array_equal(mask, [[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])


def test_logprobs_are_the_models_own():
  model = GPT(CONFIG, rngs=nnx.Rngs(0))
  prompts, completions = jnp.array([[1, 2, 3]]), jnp.array([[4, 5]])
  logps = grpo.completion_logprobs(model, prompts, completions)
  whole = jax.nn.log_softmax(model(jnp.array([[1, 2, 3, 4]])))
  np.testing.assert_allclose(logps, [[whole[0, 2, 4], whole[0, 3, 5]]], atol=1e-6)


def test_at_the_reference_the_loss_is_minus_the_mean_advantage_and_pushes_it_up():
  model = GPT(CONFIG, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  prompts = jnp.array([[1, 2, 3], [1, 2, 3]])
  completions = jnp.array([[4, 5], [6, 7]])
  mask = jnp.ones((2, 2), bool)
  advantages = jnp.array([1.0, -1.0])
  ref = grpo.completion_logprobs(model, prompts, completions)

  def loss(model, *batch):
    return grpo.grpo_loss(model, *batch, old_logps=None, ref_logps=ref, epsilon=0.2, beta=0.04)

  value = loss(model, prompts, completions, mask, jnp.array([0.5, 0.5]))
  np.testing.assert_allclose(value, -0.5, atol=1e-6)  # ratio 1, KL 0.
  step = jax.jit(step_lib.train_step(graphdef, optax.sgd(0.5), loss))
  new_params, _, _ = step(
    params, optax.sgd(0.5).init(params), prompts, completions, mask, advantages
  )
  after = grpo.completion_logprobs(nnx.merge(graphdef, new_params), prompts, completions)
  # The rewarded completion became likelier, the other one less likely.
  assert after[0].sum() > ref[0].sum() and after[1].sum() < ref[1].sum()
