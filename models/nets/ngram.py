"""A hashed n-gram table for the GPT (the Engram design): bigram and trigram rows for every block.

Each position's n-grams, the token with the one and the two tokens before it, are hashed into the
rows of one table of ``M`` rows of width ``d_model``; their rows are summed into one vector per
position, which is added to the input of every block, scaled by a learned per-block weight.

The hash of the n-gram ``(t_{i-n+1}, ..., t_i)`` of order ``n`` is, in uint32 arithmetic,

    h = salt_n XOR (t_i * m_1) XOR (t_{i-1} * m_2) XOR ... ,   row = fmix32(h) mod M,

with odd multipliers ``m_k`` (Knuth's and the Murmur3 constants, below), one salt per order, so
that a bigram and a trigram of the same tokens land in different rows, and Murmur3's finalizer
``fmix32``, without which the low bits that ``mod M`` keeps would repeat the tokens' low bits.
A position with fewer than ``n - 1`` tokens before it has no n-gram of order ``n``: its id is
``-1``, which the lookup reads as a zero row and ``ember_optax.sparse_ember`` ignores.

The table is an :class:`NgramTable` variable, not an ``nnx.Param``: the model's optimizer and
``nnx.grad(..., wrt=nnx.Param)`` leave it alone, and a training step differentiates the loss
against the gathered rows (``GPT.__call__(tokens, ngram_rows=...)``) and updates the table by
rows. Its rows start at zero, so the model at initialization computes what it would without the
table; the per-block weights start at 0.1. Choices as in the public descriptions of Engram-style
tables (zero rows at init, bigrams and trigrams in one table, a learned per-layer weight); the
gating and the projection of DeepSeek's design are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses

from flax import nnx
import jax
import jax.numpy as jnp

# Odd 32-bit multipliers: Knuth's golden-ratio constant and Murmur3's mixing constants.
MULTIPLIERS = (0x9E3779B1, 0x85EBCA6B, 0xC2B2AE35, 0x27D4EB2F)
# One salt per order (index: order - 2), so that orders do not share rows by construction.
SALTS = (0x5BD1E995, 0x1B873593, 0xCC9E2D51)
# The learned per-block weight of the n-gram vector starts here (a small, non-zero signal path).
INITIAL_BLOCK_WEIGHT = 0.1


@dataclasses.dataclass(frozen=True)
class NgramConfig:
  """An n-gram table's shape: ``rows`` rows, hashing the n-grams of ``orders``.

  Kept apart from ``GPTConfig``, so that a model without the table (the main job's) is described,
  cached and checked exactly as before.
  """

  rows: int
  orders: tuple[int, ...] = (2, 3)

  def __post_init__(self):
    check_orders(self.orders)
    if isinstance(self.rows, bool) or not isinstance(self.rows, int) or self.rows < 1:
      raise ValueError(f'an n-gram table needs at least 1 row, got rows={self.rows!r}')


class NgramTable(nnx.Variable):
  """A hashed n-gram table: trained by rows (``ember_optax.sparse_ember``), not by ``nnx.Param``s'
  optimizer."""


def check_orders(orders: Sequence[int]) -> None:
  """Raises ``ValueError`` unless ``orders`` are distinct n-gram orders from 2 to 1 + len(SALTS)."""
  highest = 1 + len(SALTS)
  if not orders or len(set(orders)) != len(orders) or not all(2 <= n <= highest for n in orders):
    raise ValueError(f'ngram_orders={tuple(orders)} must be distinct orders from 2 to {highest}')


def ngram_ids(tokens: jax.Array, rows: int, orders: Sequence[int]) -> jax.Array:
  """The table rows of every position's n-grams.

  Args:
    tokens: int token ids ``(..., length)``.
    rows: the table's number of rows ``M``.
    orders: the n-gram orders, such as ``(2, 3)``.

  Returns:
    int32 ids ``(..., length, len(orders))`` in ``[0, rows)``, or ``-1`` where the sequence has
    too few tokens before a position for that order.

  Example:
    >>> import jax.numpy as jnp
    >>> ids = ngram_ids(jnp.array([[5, 6, 7]]), rows=1000, orders=(2, 3))
    >>> ids.shape, ids[0, 0].tolist(), bool(ids[0, 2, 0] != ids[0, 2, 1])
    ((1, 3, 2), [-1, -1], True)
  """
  check_orders(orders)
  tokens = jnp.asarray(tokens).astype(jnp.uint32)
  length = tokens.shape[-1]
  columns = []
  for order in orders:
    mixed = jnp.full(tokens.shape, SALTS[order - 2], jnp.uint32)
    for back in range(order):
      # The token ``back`` positions earlier; positions before the start are masked below.
      earlier = jnp.roll(tokens, back, axis=-1)
      mixed = mixed ^ (earlier * jnp.uint32(MULTIPLIERS[back]))
    row = (_finalize(mixed) % jnp.uint32(rows)).astype(jnp.int32)
    complete = jnp.arange(length) >= order - 1
    columns.append(jnp.where(complete, row, -1))
  return jnp.stack(columns, axis=-1)


def _finalize(h: jax.Array) -> jax.Array:
  """Murmur3's 32-bit finalizer: every input bit reaches the low bits that the modulo keeps."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


class NgramEmbedding(nnx.Module):
  """The n-gram table, its hash and the per-block weights of its vector.

  Args:
    config: the table's rows and orders.
    width: the row width (the model's ``d_model``).
    n_blocks: the blocks whose input gets the n-gram vector, each with its own weight.
  """

  def __init__(self, config: NgramConfig, width: int, n_blocks: int):
    self.rows, self.orders = config.rows, config.orders
    self.table = NgramTable(jnp.zeros((config.rows, width), jnp.float32))
    self.block_weights = nnx.Param(jnp.full((n_blocks,), INITIAL_BLOCK_WEIGHT, jnp.float32))

  def ids(self, tokens: jax.Array) -> jax.Array:
    """:func:`ngram_ids` of ``tokens`` for this table."""
    return ngram_ids(tokens, self.rows, self.orders)

  def lookup(self, ids: jax.Array) -> jax.Array:
    """The rows of ``ids`` (``-1``: a zero row), ``ids.shape + (width,)``."""
    # A negative index would count from the end: send it past the end, where the fill applies.
    ids = jnp.where(ids < 0, self.rows, ids)
    return self.table[...].at[ids].get(mode='fill', fill_value=0)

  def __call__(self, tokens: jax.Array, rows: jax.Array | None = None) -> jax.Array:
    """The n-gram vector of every position, ``tokens.shape + (width,)``: the sum of its rows.

    ``rows`` (``ids(tokens).shape + (width,)``), if given, stands for the looked-up rows: the
    training step passes them to differentiate the loss against them.
    """
    if rows is None:
      rows = self.lookup(self.ids(tokens))
    return jnp.sum(rows, axis=-2)
