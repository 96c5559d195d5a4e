"""Finding a model's token tables: the input embedding and the LM head."""

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from ember_optax._src import checks

EMBER = 'ember'
ADAMW = 'adamw'

# Parameter names that hold a token table in Flax, Haiku, T5X, MaxText,
# Hugging Face Flax and nanoGPT-style codebases. A name matches a whole path
# segment, never a substring, so attention or MLP weights are never caught.
TOKEN_TABLE_NAMES = frozenset({
    'embedding',  # The table of every flax.linen.Embed and flax.nnx.Embed.
    'embeddings',
    'embed',
    'embedder',
    'embed_tokens',
    'token_embed',
    'token_embedding',
    'token_embeddings',
    'tok_embed',
    'tok_embeddings',
    'word_embeddings',
    'wte',
    'shared',  # T5's tied input/output table.
    'lm_head',
    'unembed',
    'unembedding',
    'embed_out',
    'output_embedding',
    'output_embeddings',
})

# Linen's top-level collection name, not part of any parameter's name.
_COLLECTION_NAMES = frozenset({'params'})

TokenTablePredicate = Callable[[str, Any], bool]


def _segments(path: tuple[Any, ...]) -> list[str]:
  return [name for name in checks.path_names(path) if name not in _COLLECTION_NAMES]


def is_token_table_by_name(path: str, leaf: Any) -> bool:
  """Whether ``leaf`` at ``path`` (``a/b/c``) is named like a token table."""
  if np.ndim(leaf) < 2:
    return False  # Biases and norms of a head stay with the body optimizer.
  return any(segment in TOKEN_TABLE_NAMES for segment in path.split('/'))


def token_table_labels(
    params: Any,
    *,
    vocab_size: int | None = None,
    is_token_table: TokenTablePredicate | None = None,
) -> Any:
  """Labels each parameter ``"ember"`` (a token table) or ``"adamw"`` (the rest).

  A token table is the input embedding (every Flax ``Embed`` table) or the LM
  head (a ``Dense``/``Linear`` kernel with the vocabulary on one axis; a tied
  head is the embedding leaf itself). Tables are found by name (see
  ``TOKEN_TABLE_NAMES``) and, when ``vocab_size`` is given, by structure: any
  leaf of two or more dimensions whose last two axes include one of size
  ``vocab_size``. Leaves of fewer than two dimensions are never tables.

  Args:
    params: Parameters: a dict, linen ``params`` (boxed or not), or an
      ``nnx.State``.
    vocab_size: If given, also label as tables the leaves with an axis of this
      size. Pass it whenever your names are not among the known ones.
    is_token_table: Replaces the rules above: ``is_token_table(path, leaf)``
      gets the leaf's path as ``'a/b/c'`` and the array, and returns a bool.

  Returns:
    A pytree with the structure of ``params`` holding ``"ember"`` or
    ``"adamw"`` at each leaf, ready for ``optax.partition``.

  Raises:
    ValueError: if no leaf is a token table, with what to pass instead.

  Example:
    >>> import jax.numpy as jnp
    >>> import ember_optax
    >>> params = {'wte': {'embedding': jnp.zeros((512, 8))},
    ...           'mlp': {'kernel': jnp.zeros((8, 8)), 'bias': jnp.zeros(8)}}
    >>> ember_optax.token_table_labels(params)
    {'mlp': {'bias': 'adamw', 'kernel': 'adamw'}, 'wte': {'embedding': 'ember'}}
  """

  def label(path: tuple[Any, ...], leaf: Any) -> str:
    path_name = '/'.join(_segments(path))
    if is_token_table is not None:
      return EMBER if is_token_table(path_name, leaf) else ADAMW
    by_name = is_token_table_by_name(path_name, leaf)
    by_size = vocab_size is not None and np.ndim(leaf) >= 2 and vocab_size in np.shape(leaf)[-2:]
    return EMBER if by_name or by_size else ADAMW

  labels = jax.tree_util.tree_map_with_path(label, params)
  if EMBER not in jax.tree.leaves(labels):
    shapes = ', '.join(
        f'{checks.path_str(path)} {np.shape(leaf)}'
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)[:8]
    )
    raise ValueError(
        'token_table_labels found no token table among the parameters '
        f'({shapes}{", ..." if len(jax.tree.leaves(params)) > 8 else ""}). Pass '
        'vocab_size=<your vocabulary size> so that tables are found by shape, or '
        'is_token_table=lambda path, leaf: ... , or explicit labels=.'
    )
  return labels


def check_labels(labels: Any, allowed: frozenset[str]) -> None:
  """Raises ``ValueError`` naming the first leaf whose label has no transform."""
  for path, label in jax.tree_util.tree_leaves_with_path(labels):
    if label not in allowed:
      raise ValueError(
          f'The label {label!r} of parameter {checks.path_str(path)!r} names no '
          f'transform; use one of {sorted(allowed)}.'
      )
