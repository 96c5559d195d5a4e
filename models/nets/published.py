"""Published decoder shapes (GPT-2, Llama 3, Gemma 3, Qwen2.5) as scanned Flax NNX models.

Each shape is a :class:`~models.nets.decoder.DecoderShape`, built as a scanned
:class:`~models.nets.decoder.Decoder`. :func:`abstract_model` builds it under
``nnx.eval_shape``: shapes and dtypes only, nothing allocated, so an 8B-parameter model costs no
memory until someone runs it.

The parameter count of every shape equals the published one (checked by the tests). What is left
out changes no parameter and no memory that matters here: Gemma 3's sliding-window layers are
full causal layers (a plain attention materializes the same score matrix either way), Gemma's
multiplication of the embeddings by sqrt(width) is omitted, every rotary embedding uses base
10000 (the base is a constant), and dropout is off, as in pre-training these models.
"""

from __future__ import annotations

from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

import ember_optax
from models.nets.decoder import LM_HEAD, TOKEN_EMBED, Decoder, DecoderShape

# Numbers from each model's config.json on the Hugging Face hub; parameter counts as published.
SHAPES: dict[str, DecoderShape] = {
  shape.name: shape
  for shape in (
    DecoderShape(
      name='gpt2',
      title='GPT-2 small (openai-community/gpt2)',
      vocab_size=50257,
      d_model=768,
      n_layers=12,
      n_heads=12,
      n_kv_heads=12,
      head_dim=64,
      d_ff=3072,
      mlp='gelu',
      norm='layernorm',
      bias='all',
      tied=True,
      max_positions=1024,
      published_params=124_439_808,
    ),
    DecoderShape(
      name='llama3-8b',
      title='Llama-3-8B (meta-llama/Meta-Llama-3-8B)',
      vocab_size=128256,
      d_model=4096,
      n_layers=32,
      n_heads=32,
      n_kv_heads=8,
      head_dim=128,
      d_ff=14336,
      mlp='swiglu',
      norm='rmsnorm',
      bias='none',
      tied=False,
      published_params=8_030_261_248,
    ),
    DecoderShape(
      name='gemma3-1b',
      title='Gemma-3-1B (google/gemma-3-1b-pt)',
      vocab_size=262144,
      d_model=1152,
      n_layers=26,
      n_heads=4,
      n_kv_heads=1,
      head_dim=256,
      d_ff=6912,
      mlp='geglu',
      norm='rmsnorm',
      bias='none',
      tied=True,
      sandwich_norms=True,
      published_params=999_885_952,
    ),
    DecoderShape(
      name='qwen2.5-0.5b',
      title='Qwen2.5-0.5B (Qwen/Qwen2.5-0.5B)',
      vocab_size=151936,
      d_model=896,
      n_layers=24,
      n_heads=14,
      n_kv_heads=2,
      head_dim=64,
      d_ff=4864,
      mlp='swiglu',
      norm='rmsnorm',
      bias='qkv',
      tied=True,
      published_params=494_032_768,
    ),
  )
}


def abstract_model(
  shape: DecoderShape,
  *,
  param_dtype=jnp.float32,
  remat: bool = True,
  activation_sharding: jax.sharding.Sharding | None = None,
) -> tuple[nnx.GraphDef, Any]:
  """The model's graph and its parameters as ``jax.ShapeDtypeStruct``s (nothing allocated).

  Computation runs in the parameters' dtype; ``remat`` and ``activation_sharding`` are
  :class:`Decoder`'s.

  Returns:
    ``(graphdef, params)``, ``params`` a pure dict of ``jax.ShapeDtypeStruct``s:
    ``nnx.merge(graphdef, params)`` rebuilds the model from (abstract or concrete) parameters,
    inside a traced function.
  """
  model = nnx.eval_shape(
    lambda: Decoder(
      shape,
      dtype=param_dtype,
      param_dtype=param_dtype,
      remat=remat,
      activation_sharding=activation_sharding,
      rngs=nnx.Rngs(0),
    )
  )
  graphdef, params = nnx.split(model, nnx.Param)
  return graphdef, params.to_pure_dict()


def table_labels(params: Any, shape: DecoderShape) -> Any:
  """``"token_table"`` for the token tables, ``"body"`` for the rest, per leaf of dict ``params``.

  The labels ``ember_optax.ember_adamw(labels=...)`` takes; the learned-position table of GPT-2
  is not a token table and stays with the body.
  """
  tables = {TOKEN_EMBED} if shape.tied else {TOKEN_EMBED, LM_HEAD}
  return jax.tree_util.tree_map_with_path(
    lambda path, _: (
      ember_optax.TABLE_LABEL if _path_names(path) in tables else ember_optax.BODY_LABEL
    ),
    params,
  )


def is_stacked(path: tuple[Any, ...]) -> bool:
  """Whether the parameter at key path ``path`` is stacked over layers (leading axis = layer)."""
  return _path_names(path)[:1] == ('layers',)


def _path_names(path) -> tuple[str, ...]:
  return tuple(str(getattr(key, 'key', key)) for key in path)
