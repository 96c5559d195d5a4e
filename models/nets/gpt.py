"""A decoder-only GPT in Flax NNX (its size presets are in ``models.training.presets``).

The model is GPT-2 shaped: token embedding plus learned positions, pre-norm blocks (causal
self-attention, then an MLP), a final LayerNorm and an LM head. The head is untied by default (its
own ``(d_model, vocab_size)`` kernel); ``tie_embeddings=True`` reuses the token embedding through
``nnx.Embed.attend``.

Parameter names are chosen so that token tables are found by name as well as by shape:
``token_embed.embedding`` ``(V, D)`` and ``lm_head.kernel`` ``(D, V)`` are the token tables;
``pos_embed.embedding`` ``(max_len, D)`` is *not* one (positions, not tokens), nor is the head's
bias ``logit_bias`` ``(V,)``. Presets keep every body dimension different from the vocabulary
size, so detection by shape (``vocab_size=``) agrees.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses

from flax import nnx
import jax
import jax.numpy as jnp

import ember_optax
from models.nets.ngram import NgramConfig, NgramEmbedding


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
    logit_bias: give the head a bias ``(vocab_size,)``, added to every position's logits.
  """

  vocab_size: int = 8192
  max_len: int = 128
  d_model: int = 128
  n_layers: int = 4
  n_heads: int = 4
  d_ff: int = 512
  tie_embeddings: bool = False
  logit_bias: bool = True

  def __post_init__(self):
    if self.d_model % self.n_heads:
      raise ValueError(f'd_model={self.d_model} is not a multiple of n_heads={self.n_heads}')


# GPT-2's initialization: small normal weights, zero biases.
_INIT_STD = 0.02
# One attention layer's cache for incremental decoding: keys and values, each
# (batch, max_len, heads, head_dim).
KVCache = tuple[jax.Array, jax.Array]


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

  def _qkv(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    batch, length, width = x.shape
    qkv = self.qkv(x).reshape(batch, length, 3, self.n_heads, width // self.n_heads)
    return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]

  def __call__(self, x: jax.Array) -> jax.Array:
    q, k, v = self._qkv(x)
    # (batch, length, heads, head_dim) in and out; is_causal masks out future positions.
    y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    return self.out(y.reshape(x.shape))

  def prefill(self, x: jax.Array, max_len: int) -> tuple[jax.Array, KVCache]:
    """``__call__`` on the positions of ``x``, also returning their keys and values as a cache
    of ``max_len`` positions (zeros after ``x``'s)."""
    q, k, v = self._qkv(x)
    y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    pad = ((0, 0), (0, max_len - x.shape[1]), (0, 0), (0, 0))
    return self.out(y.reshape(x.shape)), (jnp.pad(k, pad), jnp.pad(v, pad))

  def decode(self, x: jax.Array, cache: KVCache, index: jax.Array) -> tuple[jax.Array, KVCache]:
    """One position ``index`` of every sequence, ``x`` ``(batch, 1, width)``, against the keys
    and values of the positions before it (``cache``); returns the output and the cache with
    this position's keys and values written in."""
    q, k, v = self._qkv(x)
    keys = jax.lax.dynamic_update_slice_in_dim(cache[0], k.astype(cache[0].dtype), index, axis=1)
    values = jax.lax.dynamic_update_slice_in_dim(cache[1], v.astype(cache[1].dtype), index, axis=1)
    # Positions after ``index`` hold zeros (or stale entries): masked out.
    seen = (jnp.arange(keys.shape[1]) <= index)[None, None, None, :]
    y = jax.nn.dot_product_attention(q, keys, values, mask=seen)
    return self.out(y.reshape(x.shape)), (keys, values)


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

  def prefill(self, x: jax.Array, max_len: int) -> tuple[jax.Array, KVCache]:
    """The block on every position of ``x``, with its attention's cache."""
    attended, cache = self.attn.prefill(self.attn_norm(x), max_len)
    x = x + attended
    return x + self.mlp(self.mlp_norm(x)), cache

  def decode(self, x: jax.Array, cache: KVCache, index: jax.Array) -> tuple[jax.Array, KVCache]:
    """The block at one position, with its attention's cache (``CausalSelfAttention.decode``)."""
    attended, cache = self.attn.decode(self.attn_norm(x), cache, index)
    x = x + attended
    return x + self.mlp(self.mlp_norm(x)), cache


class GPT(nnx.Module):
  """Decoder-only transformer language model.

  Call it on int token ids ``(batch, length)``; it returns float32 logits
  ``(batch, length, vocab_size)``.

  Args:
    config: the model's shape.
    rngs: the random streams of the initialization.
    logit_bias_init: the initial value of the head's bias (``config.logit_bias``), for
      instance the training set's log unigram frequencies
      (``models.data.corpus.Corpus.log_unigram``), so that the untrained model predicts the unigram
      distribution instead of the uniform one. Zeros if not given.
    ngram: a hashed n-gram table (``models.nets.ngram``) whose rows are added to every block's
      input; None (the default): no table, and the model is exactly the one without it.
  """

  def __init__(
    self,
    config: GPTConfig,
    *,
    rngs: nnx.Rngs,
    logit_bias_init: jax.Array | None = None,
    ngram: NgramConfig | None = None,
  ):
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
    if config.logit_bias:
      if logit_bias_init is None:
        logit_bias_init = jnp.zeros((config.vocab_size,))
      if jnp.shape(logit_bias_init) != (config.vocab_size,):
        raise ValueError(
          f'logit_bias_init has shape {jnp.shape(logit_bias_init)}, but the head has '
          f'vocab_size={config.vocab_size} outputs'
        )
      self.logit_bias = nnx.Param(jnp.asarray(logit_bias_init, jnp.float32))
    elif logit_bias_init is not None:
      raise ValueError('logit_bias_init was given, but config.logit_bias is False')
    else:
      self.logit_bias = None
    # Last, and drawing no random numbers: every other parameter is as without the table.
    self.ngram = None if ngram is None else NgramEmbedding(ngram, config.d_model, config.n_layers)

  def __call__(self, tokens: jax.Array, ngram_rows: jax.Array | None = None) -> jax.Array:
    """The logits of ``tokens``; ``ngram_rows``, the n-gram table's rows of ``tokens`` (from
    ``self.ngram.ids``), stand for its lookup where the loss is differentiated against them."""
    length = tokens.shape[-1]
    if length > self.config.max_len:
      raise ValueError(f'sequence length {length} > max_len {self.config.max_len}')
    if self.ngram is None and ngram_rows is not None:
      raise ValueError('ngram_rows were given to a GPT without an n-gram table')
    x = self.token_embed(tokens) + self.pos_embed(jnp.arange(length))
    vector = None if self.ngram is None else self.ngram(tokens, ngram_rows)
    for index, block in enumerate(self.blocks):
      if vector is not None:
        x = x + self.ngram.block_weights[index] * vector
      x = block(x)
    return self._logits(x)

  def _logits(self, x: jax.Array) -> jax.Array:
    x = self.final_norm(x)
    logits = self.token_embed.attend(x) if self.lm_head is None else self.lm_head(x)
    if self.logit_bias is not None:
      logits = logits + self.logit_bias[...]
    return logits

  def _check_no_ngram(self, what: str) -> None:
    if self.ngram is not None:
      raise ValueError(
        f'GPT.{what}: incremental decoding does not keep the tokens an n-gram table hashes; '
        f'score whole sequences with GPT.__call__'
      )

  def init_cache(self, batch_size: int, dtype=jnp.float32) -> tuple[KVCache, ...]:
    """An empty key/value cache of ``batch_size`` sequences of up to ``max_len`` positions, one
    ``(keys, values)`` pair of ``(batch, max_len, heads, head_dim)`` arrays per block."""
    config = self.config
    shape = (batch_size, config.max_len, config.n_heads, config.d_model // config.n_heads)
    return tuple((jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in self.blocks)

  def prefill(self, tokens: jax.Array) -> tuple[jax.Array, tuple[KVCache, ...]]:
    """The start of incremental decoding: the logits ``(batch, vocab_size)`` after the last of
    ``tokens`` ``(batch, length)`` and the key/value cache of their positions, in one pass."""
    self._check_no_ngram('prefill')
    length = tokens.shape[-1]
    x = self.token_embed(tokens) + self.pos_embed(jnp.arange(length))
    cache = []
    for block in self.blocks:
      x, block_cache = block.prefill(x, self.config.max_len)
      cache.append(block_cache)
    return self._logits(x[:, -1:])[:, 0], tuple(cache)

  def decode(
    self, tokens: jax.Array, cache: tuple[KVCache, ...], index: jax.Array
  ) -> tuple[jax.Array, tuple[KVCache, ...]]:
    """Incremental decoding: the logits ``(batch, vocab_size)`` after ``tokens`` ``(batch,)``
    at position ``index`` (the same for every sequence), given the cache of the positions before
    it; returns them with the updated cache. Position by position from 0, the logits are those
    of ``__call__`` on the whole sequence (up to float rounding), at a position's cost."""
    self._check_no_ngram('decode')
    x = self.token_embed(tokens[:, None]) + self.pos_embed(index[None])
    new_cache = []
    for block, block_cache in zip(self.blocks, cache, strict=True):
      x, block_cache = block.decode(x, block_cache, index)
      new_cache.append(block_cache)
    return self._logits(x)[:, 0], tuple(new_cache)


def token_table_paths(config: GPTConfig) -> frozenset[str]:
  """The paths (``a/b``, as ``ember_optax.token_table_labels`` names them) of the token tables."""
  if config.tie_embeddings:
    return frozenset({'token_embed/embedding'})
  return frozenset({'token_embed/embedding', 'lm_head/kernel'})


def is_token_table(config: GPTConfig) -> Callable[[str, object], bool]:
  """The predicate for ``ember_optax``'s ``is_token_table=``: this model's own token tables.

  The model knows its tables, so routing never depends on detection; the tests check that
  detection (by name and by ``vocab_size``) agrees.
  """
  tables = token_table_paths(config)
  return lambda path, leaf: path in tables


# The LM head's path among the token tables (an untied head).
HEAD_PATH = 'lm_head/kernel'


def table_labels(params, config: GPTConfig, head_label: str | None = None):
  """Labels this GPT's parameters ``"token_table"`` (token tables) or ``"body"`` (the rest).

  Args:
    params: the parameters (any pytree of them: an ``nnx.State``, its gradients).
    config: the model's shape.
    head_label: if given, the LM head's label instead (so that it can take an optimizer of its
      own); the model's head must be untied.
  """
  labels = ember_optax.token_table_labels(params, is_token_table=is_token_table(config))
  if head_label is None:
    return labels
  if config.tie_embeddings:
    raise ValueError('the LM head is the token embedding (tie_embeddings): it has no own label')
  # The head alone, found as the tables are (by its path in ember_optax's naming).
  head = ember_optax.token_table_labels(params, is_token_table=lambda path, leaf: path == HEAD_PATH)
  return jax.tree.map(
    lambda label, is_head: head_label if is_head == ember_optax.TABLE_LABEL else label, labels, head
  )


def count_params(model: nnx.Module) -> int:
  """Number of scalar parameters."""
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
