"""A decoder-only GPT in Flax NNX, with named size presets.

The model is GPT-2 shaped: token embedding plus learned positions, pre-norm blocks (causal
self-attention, then an MLP), a final LayerNorm and an LM head. The head is untied by default (its
own ``(d_model, vocab_size)`` kernel); ``tie_embeddings=True`` reuses the token embedding through
``nnx.Embed.attend``.

Parameter names are chosen so that token tables are found by name as well as by shape:
``token_embed.embedding`` ``(V, D)`` and ``lm_head.kernel`` ``(D, V)`` are the token tables;
``pos_embed.embedding`` ``(max_len, D)`` is *not* one (positions, not tokens). Presets keep every
body dimension different from the vocabulary size, so detection by shape (``vocab_size=``) agrees.
"""

from __future__ import annotations

import dataclasses

from flax import nnx
import jax
import jax.numpy as jnp

from ember_optax._src.checks import path_names


@dataclasses.dataclass(frozen=True)
class GPTConfig:
  """Model shape.

  Attributes:
    vocab_size: number of token ids.
    max_len: number of learned positions (the longest sequence the model accepts).
    d_model: width of the residual stream.
    n_layers: number of blocks.
    n_heads: attention heads (``d_model`` must be a multiple).
    d_ff: hidden width of the MLP.
    tie_embeddings: reuse the token embedding as the LM head (``token_embed.attend``).
  """

  vocab_size: int = 8192
  max_len: int = 128
  d_model: int = 128
  n_layers: int = 4
  n_heads: int = 4
  d_ff: int = 512
  tie_embeddings: bool = False

  def __post_init__(self):
    if self.d_model % self.n_heads:
      raise ValueError(f"d_model={self.d_model} is not a multiple of n_heads={self.n_heads}")


@dataclasses.dataclass(frozen=True)
class Preset:
  """A model size together with the training settings that suit it.

  Attributes:
    model: the model's shape (``vocab_size`` is replaced by the tokenizer's at run time).
    batch_size: sequences per step.
    seq_len: tokens per sequence (at most ``model.max_len``).
    steps: optimizer steps of the main job.
    lr: peak learning rate (warm-up, then cosine decay to a tenth of it).
    warmup_steps: linear warm-up length.
    eval_every: steps between validation evaluations on the loss curve.
    eval_batches: validation batches of the loss curve's points.
    final_eval_batches: validation batches of the final (reported) evaluation.
    vocab_size: default tokenizer vocabulary size.
  """

  model: GPTConfig
  batch_size: int
  seq_len: int
  steps: int
  lr: float
  warmup_steps: int
  eval_every: int
  eval_batches: int
  final_eval_batches: int
  vocab_size: int = 8192


PRESETS: dict[str, Preset] = {
  # Seconds on a CPU: the test suite's model.
  "tiny": Preset(
    model=GPTConfig(max_len=64, d_model=64, n_layers=2, n_heads=2, d_ff=192),
    batch_size=16,
    seq_len=64,
    steps=100,
    lr=1e-2,
    warmup_steps=10,
    eval_every=25,
    eval_batches=2,
    final_eval_batches=4,
    vocab_size=512,
  ),
  # The default main job: a few minutes per optimizer setup on a 2-core CPU.
  "small": Preset(
    model=GPTConfig(max_len=128, d_model=128, n_layers=4, n_heads=4, d_ff=384),
    batch_size=8,
    seq_len=128,
    steps=300,
    lr=3e-3,
    warmup_steps=30,
    eval_every=50,
    eval_batches=8,
    final_eval_batches=64,
  ),
  # Meant for a GPU/TPU.
  "medium": Preset(
    model=GPTConfig(max_len=256, d_model=384, n_layers=6, n_heads=6, d_ff=1536),
    batch_size=32,
    seq_len=256,
    steps=3000,
    lr=1e-3,
    warmup_steps=200,
    eval_every=250,
    eval_batches=16,
    final_eval_batches=128,
  ),
  "large": Preset(
    model=GPTConfig(max_len=512, d_model=768, n_layers=12, n_heads=12, d_ff=3072),
    batch_size=32,
    seq_len=512,
    steps=10000,
    lr=6e-4,
    warmup_steps=500,
    eval_every=500,
    eval_batches=32,
    final_eval_batches=256,
    vocab_size=16384,
  ),
}

# GPT-2's initialization: small normal weights, zero biases.
_INIT_STD = 0.02


class CausalSelfAttention(nnx.Module):
  """Multi-head causal self-attention with one fused query/key/value projection."""

  def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs):
    self.n_heads = config.n_heads
    init = nnx.initializers.normal(_INIT_STD)
    self.qkv = nnx.Linear(config.d_model, 3 * config.d_model, kernel_init=init, rngs=rngs)
    # The output projection adds into the residual stream once per block; GPT-2 shrinks its
    # initialization by sqrt(2 * n_layers) so the stream's variance does not grow with depth.
    out_init = nnx.initializers.normal(_INIT_STD / (2 * config.n_layers) ** 0.5)
    self.out = nnx.Linear(config.d_model, config.d_model, kernel_init=out_init, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    batch, length, width = x.shape
    head_dim = width // self.n_heads
    qkv = self.qkv(x).reshape(batch, length, 3, self.n_heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    # (batch, length, heads, head_dim) in and out; is_causal masks out future positions.
    y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    return self.out(y.reshape(batch, length, width))


class MLP(nnx.Module):
  """Position-wise feed-forward network with a GELU."""

  def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs):
    init = nnx.initializers.normal(_INIT_STD)
    out_init = nnx.initializers.normal(_INIT_STD / (2 * config.n_layers) ** 0.5)
    self.up = nnx.Linear(config.d_model, config.d_ff, kernel_init=init, rngs=rngs)
    self.down = nnx.Linear(config.d_ff, config.d_model, kernel_init=out_init, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.down(jax.nn.gelu(self.up(x)))


class Block(nnx.Module):
  """Pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

  def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs):
    self.attn_norm = nnx.LayerNorm(config.d_model, rngs=rngs)
    self.attn = CausalSelfAttention(config, rngs=rngs)
    self.mlp_norm = nnx.LayerNorm(config.d_model, rngs=rngs)
    self.mlp = MLP(config, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.attn(self.attn_norm(x))
    return x + self.mlp(self.mlp_norm(x))


class GPT(nnx.Module):
  """Decoder-only transformer language model.

  Call it on int token ids ``(batch, length)``; it returns float32 logits
  ``(batch, length, vocab_size)``.
  """

  def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs):
    self.config = config
    embed_init = nnx.initializers.normal(_INIT_STD)
    self.token_embed = nnx.Embed(
      config.vocab_size, config.d_model, embedding_init=embed_init, rngs=rngs
    )
    self.pos_embed = nnx.Embed(config.max_len, config.d_model, embedding_init=embed_init, rngs=rngs)
    self.blocks = nnx.List([Block(config, rngs=rngs) for _ in range(config.n_layers)])
    self.final_norm = nnx.LayerNorm(config.d_model, rngs=rngs)
    if config.tie_embeddings:
      self.lm_head = None
    else:
      self.lm_head = nnx.Linear(
        config.d_model,
        config.vocab_size,
        use_bias=False,
        kernel_init=nnx.initializers.normal(_INIT_STD),
        rngs=rngs,
      )

  def __call__(self, tokens: jax.Array) -> jax.Array:
    length = tokens.shape[-1]
    if length > self.config.max_len:
      raise ValueError(f"sequence length {length} > max_len {self.config.max_len}")
    x = self.token_embed(tokens) + self.pos_embed(jnp.arange(length))
    for block in self.blocks:
      x = block(x)
    x = self.final_norm(x)
    if self.lm_head is None:
      return self.token_embed.attend(x)
    return self.lm_head(x)


def token_table_paths(config: GPTConfig) -> set[tuple[str, ...]]:
  """The parameter paths of the token tables (as ``nnx.State`` key tuples)."""
  paths = {("token_embed", "embedding")}
  if not config.tie_embeddings:
    paths.add(("lm_head", "kernel"))
  return paths


def table_labels(params, config: GPTConfig):
  """Labels this GPT's parameters ``"ember"`` (token tables) or ``"adamw"`` (the rest).

  The model knows its own tables, so the comparison never depends on a detection heuristic;
  the tests check that ``ember_optax.token_table_labels(params, vocab_size=V)`` agrees.
  """
  tables = token_table_paths(config)
  return jax.tree_util.tree_map_with_path(
    lambda path, _: "ember" if path_names(path) in tables else "adamw", params
  )


def count_params(model: nnx.Module) -> int:
  """Number of scalar parameters."""
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
