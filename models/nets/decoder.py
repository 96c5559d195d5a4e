"""A decoder-only transformer built from its configuration numbers, as a scanned Flax NNX model.

:class:`DecoderShape` holds a model's public configuration numbers (Hugging Face
``config.json``): vocabulary, width, layers, attention heads and key/value heads, head width, MLP
width and kind, normalization, biases, tied or untied head. :class:`Decoder` builds that model with
its layers stacked on a leading axis (``nnx.vmap``) and applied by ``nnx.scan``, so that a train
step compiles in seconds whatever the depth. The published shapes are in
``models.nets.published``.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import math

from flax import nnx
import jax
import jax.numpy as jnp

# Path segments (nnx.State keys) of the token tables. A tied head reuses the embedding.
TOKEN_EMBED = ('token_embed', 'embedding')
LM_HEAD = ('lm_head', 'kernel')

_INIT_STD = 0.02


@dataclasses.dataclass(frozen=True)
class DecoderShape:
  """A decoder-only transformer's configuration numbers.

  Attributes:
    name: short name, used on the command line.
    title: the published model whose configuration this is.
    vocab_size: token ids (the tables' first axis).
    d_model: width of the residual stream.
    n_layers: decoder blocks.
    n_heads: query heads.
    n_kv_heads: key/value heads (grouped-query attention when fewer than ``n_heads``).
    head_dim: width of one head.
    d_ff: hidden width of the MLP.
    mlp: ``"gelu"`` (two matrices) or ``"swiglu"``/``"geglu"`` (gated, three matrices).
    norm: ``"layernorm"`` (scale and bias) or ``"rmsnorm"`` (scale).
    bias: which projections carry a bias: ``"all"``, ``"qkv"`` or ``"none"``.
    tied: the LM head is the token embedding (``Embed.attend``); else its own ``(D, V)`` kernel.
    max_positions: rows of a learned position table; 0 for rotary positions (no parameters).
    sandwich_norms: Gemma's extra norms on each sublayer's output and on queries and keys.
    published_params: the parameter count the model's authors give, checked by the tests.
  """

  name: str
  title: str
  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  head_dim: int
  d_ff: int
  mlp: str
  norm: str
  bias: str
  tied: bool
  max_positions: int = 0
  sandwich_norms: bool = False
  published_params: int = 0

  def __post_init__(self):
    if self.mlp not in ('gelu', 'swiglu', 'geglu'):
      raise ValueError(f"mlp={self.mlp!r}: expected 'gelu', 'swiglu' or 'geglu'")
    if self.norm not in ('layernorm', 'rmsnorm'):
      raise ValueError(f"norm={self.norm!r}: expected 'layernorm' or 'rmsnorm'")
    if self.bias not in ('all', 'qkv', 'none'):
      raise ValueError(f"bias={self.bias!r}: expected 'all', 'qkv' or 'none'")
    if self.n_heads % self.n_kv_heads:
      raise ValueError(f'n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}')

  def table_shapes(self) -> list[tuple[int, int]]:
    """Shapes of the token tables as stored: the embedding ``(V, D)``, an untied head ``(D, V)``."""
    tables = [(self.vocab_size, self.d_model)]
    if not self.tied:
      tables.append((self.d_model, self.vocab_size))
    return tables

  def table_params(self) -> int:
    """Scalars in the token tables."""
    return sum(math.prod(shape) for shape in self.table_shapes())


def _norm(shape: DecoderShape, features: int, dtype, param_dtype, rngs: nnx.Rngs) -> nnx.Module:
  if shape.norm == 'layernorm':
    return nnx.LayerNorm(features, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
  return nnx.RMSNorm(features, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def _rotary(x: jax.Array) -> jax.Array:
  """Rotary position embedding of ``x`` ``(batch, length, heads, head_dim)`` (base 10000)."""
  length, half = x.shape[1], x.shape[-1] // 2
  frequencies = 10000.0 ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = jnp.arange(length, dtype=jnp.float32)[:, None] * frequencies
  cos = jnp.cos(angles)[None, :, None, :].astype(x.dtype)
  sin = jnp.sin(angles)[None, :, None, :].astype(x.dtype)
  first, second = x[..., :half], x[..., half:]
  return jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)


class Attention(nnx.Module):
  """Causal grouped-query self-attention (multi-head when ``n_kv_heads == n_heads``)."""

  def __init__(self, shape: DecoderShape, dtype, param_dtype, *, rngs: nnx.Rngs):
    self.shape = shape
    init = nnx.initializers.normal(_INIT_STD)

    def linear(n_in: int, n_out: int, bias: bool) -> nnx.Linear:
      return nnx.Linear(
        n_in,
        n_out,
        use_bias=bias,
        kernel_init=init,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
      )

    qkv_bias = shape.bias in ('all', 'qkv')
    self.query = linear(shape.d_model, shape.n_heads * shape.head_dim, qkv_bias)
    self.key = linear(shape.d_model, shape.n_kv_heads * shape.head_dim, qkv_bias)
    self.value = linear(shape.d_model, shape.n_kv_heads * shape.head_dim, qkv_bias)
    self.out = linear(shape.n_heads * shape.head_dim, shape.d_model, shape.bias == 'all')
    if shape.sandwich_norms:
      self.query_norm = _norm(shape, shape.head_dim, dtype, param_dtype, rngs)
      self.key_norm = _norm(shape, shape.head_dim, dtype, param_dtype, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    batch, length, _ = x.shape
    s = self.shape
    q = self.query(x).reshape(batch, length, s.n_heads, s.head_dim)
    k = self.key(x).reshape(batch, length, s.n_kv_heads, s.head_dim)
    v = self.value(x).reshape(batch, length, s.n_kv_heads, s.head_dim)
    if s.sandwich_norms:
      q, k = self.query_norm(q), self.key_norm(k)
    if not s.max_positions:
      q, k = _rotary(q), _rotary(k)
    y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    return self.out(y.reshape(batch, length, s.n_heads * s.head_dim))


class MLP(nnx.Module):
  """GELU MLP, or a gated one (SwiGLU: SiLU gate; GeGLU: tanh-GELU gate)."""

  def __init__(self, shape: DecoderShape, dtype, param_dtype, *, rngs: nnx.Rngs):
    init = nnx.initializers.normal(_INIT_STD)
    bias = shape.bias == 'all'

    def linear(n_in: int, n_out: int) -> nnx.Linear:
      return nnx.Linear(
        n_in,
        n_out,
        use_bias=bias,
        kernel_init=init,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
      )

    self.activation: Callable = jax.nn.silu if shape.mlp == 'swiglu' else jax.nn.gelu
    self.gate = linear(shape.d_model, shape.d_ff) if shape.mlp != 'gelu' else None
    self.up = linear(shape.d_model, shape.d_ff)
    self.down = linear(shape.d_ff, shape.d_model)

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.gate is None:
      return self.down(self.activation(self.up(x)))
    return self.down(self.activation(self.gate(x)) * self.up(x))


class Layer(nnx.Module):
  """Pre-norm block; with ``sandwich_norms`` each sublayer's output is normalized too."""

  def __init__(self, shape: DecoderShape, dtype, param_dtype, *, rngs: nnx.Rngs):
    self.attn_norm = _norm(shape, shape.d_model, dtype, param_dtype, rngs)
    self.attn = Attention(shape, dtype, param_dtype, rngs=rngs)
    self.mlp_norm = _norm(shape, shape.d_model, dtype, param_dtype, rngs)
    self.mlp = MLP(shape, dtype, param_dtype, rngs=rngs)
    if shape.sandwich_norms:
      self.attn_out_norm = _norm(shape, shape.d_model, dtype, param_dtype, rngs)
      self.mlp_out_norm = _norm(shape, shape.d_model, dtype, param_dtype, rngs)
    self.sandwich = shape.sandwich_norms

  def __call__(self, x: jax.Array) -> jax.Array:
    attn = self.attn(self.attn_norm(x))
    x = x + (self.attn_out_norm(attn) if self.sandwich else attn)
    mlp = self.mlp(self.mlp_norm(x))
    return x + (self.mlp_out_norm(mlp) if self.sandwich else mlp)


class Decoder(nnx.Module):
  """A decoder-only language model of a :class:`DecoderShape`, its layers scanned.

  Call it on int token ids ``(batch, length)``; it returns logits ``(batch, length, vocab)`` in
  the compute ``dtype``. With ``remat=True`` each layer's activations are recomputed in the
  backward pass (``nnx.remat``), so that only the layers' inputs are kept: how these models are
  trained at scale.

  Args:
    shape: the model's configuration numbers.
    dtype: computation dtype (activations).
    param_dtype: parameter dtype.
    remat: recompute each layer's activations in the backward pass.
    activation_sharding: if given, the residual stream and the logits are constrained to it
      (``jax.lax.with_sharding_constraint``), e.g. split along the batch over the devices that
      also split the parameters: XLA then gathers each weight where it is used (FSDP) rather
      than gathering the activations.
    rngs: initialization keys.
  """

  def __init__(
    self,
    shape: DecoderShape,
    *,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    remat: bool = True,
    activation_sharding: jax.sharding.Sharding | None = None,
    rngs: nnx.Rngs,
  ):
    self.shape = shape
    self.remat = remat
    self.activation_sharding = activation_sharding
    init = nnx.initializers.normal(_INIT_STD)
    self.token_embed = nnx.Embed(
      shape.vocab_size,
      shape.d_model,
      embedding_init=init,
      dtype=dtype,
      param_dtype=param_dtype,
      rngs=rngs,
    )
    if shape.max_positions:
      self.pos_embed = nnx.Embed(
        shape.max_positions,
        shape.d_model,
        embedding_init=init,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
      )

    @nnx.split_rngs(splits=shape.n_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make_layers(rngs: nnx.Rngs) -> Layer:
      return Layer(shape, dtype, param_dtype, rngs=rngs)

    self.layers = make_layers(rngs)
    self.final_norm = _norm(shape, shape.d_model, dtype, param_dtype, rngs)
    if not shape.tied:
      self.lm_head = nnx.Linear(
        shape.d_model,
        shape.vocab_size,
        use_bias=False,
        kernel_init=init,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
      )

  def _constrain(self, x: jax.Array) -> jax.Array:
    if self.activation_sharding is None:
      return x
    return jax.lax.with_sharding_constraint(x, self.activation_sharding)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    length = tokens.shape[-1]
    x = self.token_embed(tokens)
    if self.shape.max_positions:
      if length > self.shape.max_positions:
        raise ValueError(
          f"sequence length {length} > {self.shape.name}'s "
          f'{self.shape.max_positions} learned positions'
        )
      # A slice, not a lookup of arange(length): its gradient is a pad, where a gather's would
      # be a scatter-add that XLA tries, slowly, to constant-fold.
      x = x + self.pos_embed.embedding[:length]
    x = self._constrain(x)

    def apply_layer(x: jax.Array, layer: Layer) -> jax.Array:
      return self._constrain(layer(x))

    if self.remat:
      apply_layer = nnx.remat(apply_layer)
    x = nnx.scan(apply_layer, in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)(x, self.layers)
    x = self.final_norm(x)
    if self.shape.tied:
      return self._constrain(self.token_embed.attend(x))
    return self._constrain(self.lm_head(x))
