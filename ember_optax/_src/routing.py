"""Finding a model's token tables: the input embedding and the LM head."""

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from ember_optax._src import paths

# The labels of token_table_labels, and the groups of ember_partition's state.
TABLE_LABEL = 'token_table'
BODY_LABEL = 'body'

# Names of token tables, and of the modules that hold one, in Flax, Haiku, T5X,
# MaxText, Tunix, Hugging Face Flax, Equinox and nanoGPT-style codebases. A name
# matches a whole path segment, never a substring, and only the leaf's own name
# or its module's (``lm_head/kernel``), never a module further up: leaves of a
# submodule inside an embedder (a projection, a norm) are not tables.
TOKEN_TABLE_NAMES = frozenset(
  {
    'wte',
    'embed_tokens',
    'token_embed',
    'token_embedder',  # T5X, MaxText.
    'token_embedding',
    'token_embeddings',
    'tok_embed',
    'tok_embeddings',
    'word_embeddings',
    'input_embedding',  # Tunix's Gemma, Llama and Qwen embedders.
    'per_layer_input_embedding',  # Gemma 4's per-layer token table (V, L, P).
    'shared',  # T5's tied input/output table.
    'lm_head',
    'logits_dense',  # MaxText's untied head.
    'logitdense',  # Flax's lm1b example.
    'unembed',
    'unembedding',
    'embed_out',
    'output_embedding',
    'output_embeddings',
  }
)

# Generic names: a leaf so named is a table (the ``embedding`` of every Flax
# ``Embed``, Haiku's ``embeddings``), but a module so named holds a table only
# in the leaves listed below. A ``kernel`` or ``w`` under ``embedding`` is a
# convolution or a projection, such as SigLIP's patch embedding.
_GENERIC_TABLE_NAMES = frozenset({'embedding', 'embeddings', 'embed', 'embedder'})
_TABLE_LEAF_NAMES = frozenset({'embedding', 'embeddings', 'weight'})

# Tables of positions or of other small index sets, not tokens (GPT-2's ``wpe``,
# MaxText's learned positions, ViT's and lm1b's ``pos_embedding``, BERT's segment
# types, T5's relative-position buckets), whatever the names around them.
_NON_TOKEN_TABLE_NAMES = frozenset(
  {
    'wpe',
    'pos_embed',
    'pos_emb',
    'pos_embedding',
    'pos_embeddings',
    'position_embedder',
    'position_embedding',
    'position_embeddings',
    'positional_embedding',
    'positional_embeddings',
    'embed_positions',
    'posembed_input',
    'posembed_output',
    'token_type_embeddings',
    'segment_embeddings',
    'relative_attention_bias',
  }
)

TokenTablePredicate = Callable[[str, Any], bool]


def is_adapter(path: str) -> bool:
  """Whether ``path`` (``a/b/c``) lies in a low-rank adapter, such as LoRA's factors."""
  return any('lora' in segment.lower() for segment in path.split('/'))


def is_non_token_table(path: str) -> bool:
  """Whether ``path`` (``a/b/c``) names a table of positions (or segment types), not tokens."""
  return any(segment in _NON_TOKEN_TABLE_NAMES for segment in path.split('/'))


def is_token_table_by_name(path: str, leaf: Any) -> bool:
  """Whether ``leaf`` at ``path`` (``a/b/c``) is named like a token table.

  Its own name or its module's is in :data:`TOKEN_TABLE_NAMES`; or it is named
  ``embedding``, ``embeddings``, ``embed`` or ``embedder``; or its module is so
  named and the leaf is that module's table (``embedding``, ``embeddings`` or
  Equinox's ``weight``). Leaves of fewer than two dimensions, adapters and
  tables of positions or segment types never are.
  """
  if np.ndim(leaf) < 2 or is_adapter(path) or is_non_token_table(path):
    return False
  *modules, name = path.split('/')
  parent = modules[-1] if modules else None
  if name in TOKEN_TABLE_NAMES or parent in TOKEN_TABLE_NAMES:
    return True
  if name in _GENERIC_TABLE_NAMES:
    return True
  return parent in _GENERIC_TABLE_NAMES and name in _TABLE_LEAF_NAMES


def is_token_table_by_size(path: str, leaf: Any, vocab_size: int) -> bool:
  """Whether ``leaf`` has an axis of ``vocab_size``, and is neither an adapter nor positions."""
  if np.ndim(leaf) < 2 or is_adapter(path) or is_non_token_table(path):
    return False
  return vocab_size in np.shape(leaf)


def static_vocab_size(vocab_size: Any, who: str) -> int | None:
  """``vocab_size`` as a Python int; raises if it is not one, naming ``static_args``.

  ``optax.inject_hyperparams`` turns every number it is given into an array;
  ``init`` reads such an array's value, but a traced one has none.
  """
  if vocab_size is None:
    return None
  if isinstance(vocab_size, jax.core.Tracer):
    raise TypeError(
      f'{who}: vocab_size arrived as a traced array, so the token tables cannot be found '
      f'while tracing. optax.inject_hyperparams turns every number into an array: build it '
      f"as optax.inject_hyperparams(..., static_args=('vocab_size',)), or call init outside "
      f'jax.jit.'
    )
  value = np.asarray(vocab_size)
  if value.ndim != 0 or not np.issubdtype(value.dtype, np.integer) or int(value) < 1:
    raise ValueError(f'{who}: vocab_size={vocab_size!r} must be a positive integer.')
  return int(value)


def token_table_labels(
  params: Any,
  *,
  vocab_size: int | None = None,
  is_token_table: TokenTablePredicate | None = None,
) -> Any:
  """Labels each parameter ``"token_table"`` (a token table) or ``"body"`` (the rest).

  A token table is the input embedding or the LM head (a ``Dense``/``Linear``
  kernel with the vocabulary on one axis; a tied head is the embedding leaf
  itself).

  * With ``vocab_size``, a table is a leaf of two or more dimensions with an
    axis of that size (any axis: ``(V, D)``, a Dense head ``(D, V)``, stacked
    ``(L, V, D)``, Gemma 4's per-layer ``(V, L, P)``), and nothing else.
  * Without it, tables are found by name (see :func:`is_token_table_by_name`
    and :data:`TOKEN_TABLE_NAMES`).

  Either way, leaves of fewer than two dimensions (biases, norms), low-rank
  adapters (any path segment containing ``lora``: LoRA factors of a head are
  not tables) and tables of positions or segment types (``wpe``,
  ``pos_embed``, ``position_embedder``, ``token_type_embeddings``, T5's
  ``relative_attention_bias``, ...) are never token tables.

  Args:
    params: Parameters: a dict, linen ``params`` (boxed or not), an
      ``nnx.State`` or an Equinox module.
    vocab_size: If given, tables are the leaves with an axis of this size.
      Pass it whenever you know it: it is exact on every model.
    is_token_table: Replaces the rules above: ``is_token_table(path, leaf)``
      gets the leaf's path as ``'a/b/c'`` and the array, and returns a bool.

  Returns:
    A pytree with the structure of ``params`` holding ``"token_table"`` or
    ``"body"`` at each leaf, ready for :func:`optax.partition`.

  Raises:
    ValueError: if no leaf is a token table, with what to pass instead (and,
      when the parameters are LoRA adapters, what to do about them).

  Example:
    >>> import jax.numpy as jnp
    >>> import ember_optax
    >>> params = {'wte': {'embedding': jnp.zeros((512, 8))},
    ...           'wpe': {'embedding': jnp.zeros((64, 8))},
    ...           'mlp': {'kernel': jnp.zeros((8, 8))}}
    >>> ember_optax.token_table_labels(params)
    {'mlp': {'kernel': 'body'}, 'wpe': {'embedding': 'body'}, 'wte': {'embedding': 'token_table'}}
  """
  vocab_size = static_vocab_size(vocab_size, 'token_table_labels')

  def is_table(path_name: str, leaf: Any) -> bool:
    if is_token_table is not None:
      return bool(is_token_table(path_name, leaf))
    if vocab_size is not None:
      return is_token_table_by_size(path_name, leaf, vocab_size)
    return is_token_table_by_name(path_name, leaf)

  def label(path: tuple[Any, ...], leaf: Any) -> str:
    return TABLE_LABEL if is_table(paths.param_path(path), leaf) else BODY_LABEL

  labels = jax.tree_util.tree_map_with_path(label, params)
  if TABLE_LABEL not in jax.tree.leaves(labels):
    raise ValueError(_no_table_message(params, vocab_size))
  return labels


def _no_table_message(params: Any, vocab_size: int | None) -> str:
  leaves = jax.tree_util.tree_leaves_with_path(params)
  adapters = [paths.path_str(path) for path, _ in leaves if is_adapter(paths.path_str(path))]
  if adapters and len(adapters) == len(leaves):
    return (
      f'token_table_labels found no token table: the parameters are low-rank adapters only '
      f'({", ".join(adapters[:4])}{", ..." if len(adapters) > 4 else ""}), as when a LoRA '
      f'trainer optimizes nnx.LoRAParam alone. Ember optimizes token tables, and LoRA '
      f'training freezes them: for adapter-only training use the body optimizer itself '
      f'(optax.adamw, optax.contrib.muon), or make the tables trainable beside the adapters '
      f'(for instance nnx.Optimizer(model, tx, wrt=nnx.Any(nnx.LoRAParam, <a filter for the '
      f'embedder>))). LoRA factors of a head are never token tables.'
    )
  shapes = ', '.join(f'{paths.path_str(path)} {np.shape(leaf)}' for path, leaf in leaves[:8])
  found_by = (
    f'no leaf of two or more dimensions has an axis of vocab_size={vocab_size}'
    if vocab_size is not None
    else 'no leaf is named like one (see ember_optax.TOKEN_TABLE_NAMES)'
  )
  return (
    f'token_table_labels found no token table among the parameters '
    f'({shapes}{", ..." if len(leaves) > 8 else ""}): {found_by}. Pass vocab_size=<your '
    f'vocabulary size> so that tables are found by shape, or is_token_table=lambda path, '
    f'leaf: ... , or explicit labels=.'
  )


def check_labels(labels: Any, allowed: frozenset[str]) -> None:
  """Raises ``ValueError`` naming the first leaf whose label has no transform."""
  for path, label in jax.tree_util.tree_leaves_with_path(labels):
    if label not in allowed:
      raise ValueError(
        f'The label {label!r} of parameter {paths.path_str(path)!r} names no '
        f'transform; use one of {sorted(allowed)}.'
      )
