"""GRPO's pieces: group-relative advantages and the clipped policy loss with a KL term.

Group Relative Policy Optimization (Shao et al., 2024) samples a group of completions per
prompt, scores each with a reward, and takes each completion's advantage relative to its group:
``(reward - group mean) / (group std + eps)``, so no value model is needed. The loss per
completion token ``t`` is the PPO clipped surrogate minus a KL penalty to a reference model
(the starting model), with ``ratio = exp(logp - logp_old)``::

    -[min(ratio * A, clip(ratio, 1 - epsilon, 1 + epsilon) * A) - beta * KL]
    KL = exp(logp_ref - logp) - (logp_ref - logp) - 1     (the unbiased k3 estimator, >= 0)

averaged over each completion's tokens up to and including its first end-of-text, then over the
completions. A group whose rewards are all equal has zero advantages: it teaches nothing, which
is why small groups learn slowly.

References:
  Shao et al., 2024, "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open
  Language Models", https://arxiv.org/abs/2402.03300.
"""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np


def group_advantages(rewards: np.ndarray, eps: float = 1e-4) -> np.ndarray:
  """``(prompts, group)`` rewards -> ``(prompts * group,)`` advantages, row-major.

  Example:
    >>> group_advantages(np.array([[1.0, 0.0], [1.0, 1.0]])).round(3).tolist()
    [1.0, -1.0, 0.0, 0.0]
  """
  rewards = np.asarray(rewards, dtype=np.float32)
  mean = rewards.mean(axis=1, keepdims=True)
  std = rewards.std(axis=1, keepdims=True)
  return ((rewards - mean) / (std + eps)).reshape(-1)


def completion_mask(completions: jax.Array, eot: int) -> jax.Array:
  """``(batch, new_tokens)`` True on each completion's tokens up to and including its first
  end-of-text (the tokens the policy chose before it stopped)."""
  ended_before = jnp.cumsum(completions == eot, axis=1) - (completions == eot)
  return ended_before == 0


def completion_logprobs(model: nnx.Module, prompts: jax.Array, completions: jax.Array):
  """``(batch, new_tokens)`` log-probabilities of each completion token under ``model``."""
  tokens = jnp.concatenate([prompts, completions], axis=1)
  logits = model(tokens[:, :-1]).astype(jnp.float32)[:, prompts.shape[1] - 1 :]
  logps = jax.nn.log_softmax(logits)
  return jnp.take_along_axis(logps, completions[..., None], axis=-1)[..., 0]


def grpo_loss(
  model: nnx.Module,
  prompts: jax.Array,
  completions: jax.Array,
  mask: jax.Array,
  advantages: jax.Array,
  old_logps: jax.Array | None,
  ref_logps: jax.Array,
  epsilon: float,
  beta: float,
) -> jax.Array:
  """GRPO's loss of one batch of completions (module docstring), to minimize.

  Args:
    model: the policy.
    prompts: ``(batch, prompt_len)`` token ids, each prompt repeated for its group.
    completions: ``(batch, new_tokens)`` sampled token ids.
    mask: ``completion_mask`` of ``completions``.
    advantages: ``(batch,)`` from ``group_advantages``.
    old_logps: ``completion_logprobs`` under the policy that sampled them; None when that is
      the policy being updated (one update per batch): the ratio is then 1, with its gradient.
    ref_logps: ``completion_logprobs`` under the reference model.
    epsilon: the ratio's clipping range.
    beta: the KL term's weight.
  """
  logps = completion_logprobs(model, prompts, completions)
  if old_logps is None:
    old_logps = jax.lax.stop_gradient(logps)
  ratio = jnp.exp(logps - old_logps)
  advantages = advantages[:, None]
  surrogate = jnp.minimum(
    ratio * advantages, jnp.clip(ratio, 1 - epsilon, 1 + epsilon) * advantages
  )
  log_ratio_ref = ref_logps - logps
  kl = jnp.exp(log_ratio_ref) - log_ratio_ref - 1
  per_token = -(surrogate - beta * kl)
  counts = jnp.maximum(mask.sum(axis=1), 1)
  return (jnp.where(mask, per_token, 0.0).sum(axis=1) / counts).mean()
