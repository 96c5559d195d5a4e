"""Sampling completions from a GPT with its key/value cache (``GPT.decode``), under ``jax.jit``.

Every prompt of a batch has the same length, so every sequence is at the same position: the
prompt fills the cache in one pass (``GPT.prefill``), then each new token is drawn from the
softmax of the logits over the temperature and fed back (``GPT.decode`` in a ``lax.scan``). A
completion's tokens after its first end-of-text are still drawn (the batch has one shape); the
reward and the loss ignore them.
"""

from __future__ import annotations

from collections.abc import Callable

from flax import nnx
import jax
import jax.numpy as jnp

from models.nets.gpt import GPT


def generate(
  model: GPT, prompts: jax.Array, key: jax.Array, max_new_tokens: int, temperature: float = 1.0
) -> jax.Array:
  """``(batch, max_new_tokens)`` int32 tokens sampled after ``prompts`` ``(batch, prompt_len)``.

  Raises:
    ValueError: if the prompt and the completion do not fit the model's ``max_len``.
  """
  batch, prompt_len = prompts.shape
  if prompt_len + max_new_tokens > model.config.max_len:
    raise ValueError(
      f'prompt_len {prompt_len} + max_new_tokens {max_new_tokens} > max_len {model.config.max_len}'
    )
  logits, cache = model.prefill(prompts)
  first_key, key = jax.random.split(key)

  def draw_token(logits, step_key):
    return jax.random.categorical(step_key, logits / temperature).astype(jnp.int32)

  def draw(carry, position):
    token, cache = carry
    index, step_key = position
    logits, cache = model.decode(token, cache, index)
    token = draw_token(logits, step_key)
    return (token, cache), token

  first = draw_token(logits, first_key)
  # Token i of the completion sits at position prompt_len + i; feeding it gives token i + 1.
  keys = jax.random.split(key, max_new_tokens - 1)
  indices = jnp.arange(prompt_len, prompt_len + max_new_tokens - 1)
  _, rest = jax.lax.scan(draw, (first, cache), (indices, keys))
  return jnp.concatenate([first[:, None], rest.T], axis=1)


def sampler(
  graphdef: nnx.GraphDef, max_new_tokens: int, temperature: float = 1.0
) -> Callable[[nnx.State, jax.Array, jax.Array], jax.Array]:
  """The jitted ``sample(params, prompts, key) -> completions`` of a model's graph."""

  @jax.jit
  def sample(params, prompts, key):
    return generate(nnx.merge(graphdef, params), prompts, key, max_new_tokens, temperature)

  return sample
