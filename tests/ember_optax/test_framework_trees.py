"""token_table_labels on the parameter trees of the JAX LLM stack, written out by hand.

Each tree carries the paths and shapes that the framework's own models give (read from their
source, or printed from their classes at a tiny config): Tunix 0.1.7's Gemma 3 (with its SigLIP
vision encoder), Gemma 4 (with per-layer inputs), Llama 3 and Qwen 3, tied and untied, and Qwen 3
with LoRA; MaxText 0.2.5's linen decoder and the same under its Tunix adapter; Flax's lm1b
example; Hugging Face Flax-style GPT-J, GPT-2, BERT and T5; an Equinox GPT. The tables must be
found exactly, by vocabulary size and, on every tree, by name.
"""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

import ember_optax

V, D, F, L = 257, 32, 64, 2  # vocabulary, width, MLP width, layers
H, K, HD = 4, 2, 8  # query heads, key-value heads, head dim


def _tree(shapes: dict[str, tuple[int, ...]]) -> dict:
  """A nested dict of ShapeDtypeStructs from ``{'a/b/c': shape}``."""
  tree: dict = {}
  for path, shape in shapes.items():
    *modules, name = path.split('/')
    node = tree
    for module in modules:
      node = node.setdefault(module, {})
    node[name] = jax.ShapeDtypeStruct(shape, jnp.float32)
  return tree


def _tables(labels) -> set[str]:
  return {
    jax.tree_util.keystr(path, simple=True, separator='/')
    for path, label in jax.tree_util.tree_leaves_with_path(labels)
    if label == ember_optax.TABLE_LABEL
  }


def _tunix_decoder_layers(prefix: str = 'layers') -> dict[str, tuple[int, ...]]:
  """Tunix's Llama/Qwen layers: an nnx.List of blocks with Einsum weights ``w``."""
  shapes = {}
  for i in range(L):
    block = f'{prefix}/{i}'
    shapes |= {
      f'{block}/attn/q_proj/w': (D, H, HD),
      f'{block}/attn/k_proj/w': (D, K, HD),
      f'{block}/attn/v_proj/w': (D, K, HD),
      f'{block}/attn/o_proj/w': (H, HD, D),
      f'{block}/mlp/gate_proj/kernel': (D, F),
      f'{block}/mlp/up_proj/kernel': (D, F),
      f'{block}/mlp/down_proj/kernel': (F, D),
      f'{block}/input_layernorm/w': (D,),
      f'{block}/post_attention_layernorm/w': (D,),
    }
  return shapes


TUNIX_LLAMA3_TIED = {
  'embedder/input_embedding': (V, D),
  **_tunix_decoder_layers(),
  'final_norm/w': (D,),
}
TUNIX_LLAMA3_UNTIED = {**TUNIX_LLAMA3_TIED, 'lm_head/w': (D, V)}
TUNIX_QWEN3_TIED = {
  **TUNIX_LLAMA3_TIED,
  **{f'layers/{i}/attn/{n}_norm/w': (HD,) for i in range(L) for n in ('q', 'k')},
}
TUNIX_QWEN3_UNTIED = {**TUNIX_QWEN3_TIED, 'lm_head/w': (D, V)}

# LoRA (qwix, rank 4) on attention, MLP and head; Tunix then optimizes these nnx.LoRAParams alone.
TUNIX_QWEN3_LORA_ONLY = {}
for _i in range(L):
  TUNIX_QWEN3_LORA_ONLY |= {
    f'layers/{_i}/attn/q_proj/w_lora_a': (D, 4),
    f'layers/{_i}/attn/q_proj/w_lora_b': (4, H, HD),
    f'layers/{_i}/attn/k_proj/w_lora_a': (D, 4),
    f'layers/{_i}/attn/k_proj/w_lora_b': (4, K, HD),
    f'layers/{_i}/attn/o_proj/w_lora_a': (H, HD, 4),
    f'layers/{_i}/attn/o_proj/w_lora_b': (4, D),
    f'layers/{_i}/mlp/gate_proj/kernel_lora_a': (D, 4),
    f'layers/{_i}/mlp/gate_proj/kernel_lora_b': (4, F),
    f'layers/{_i}/mlp/down_proj/kernel_lora_a': (F, 4),
    f'layers/{_i}/mlp/down_proj/kernel_lora_b': (4, D),
  }
TUNIX_QWEN3_LORA_ONLY |= {'lm_head/w_lora_a': (D, 4), 'lm_head/w_lora_b': (4, V)}

VISION, PATCH, CHANNELS = 16, 14, 3
SIGLIP = 'vision_encoder/siglip_encoder'
TUNIX_GEMMA3_VISION = {
  'embedder/input_embedding': (V, D),
  'embedder/mm_input_projection/w': (VISION, D),
  'embedder/mm_soft_embedding_norm/scale': (VISION,),
  f'{SIGLIP}/embedding/kernel': (PATCH, PATCH, CHANNELS, VISION),  # the patch convolution
  f'{SIGLIP}/embedding/bias': (VISION,),
  f'{SIGLIP}/pos_embedding': (1, 4, VISION),
  **{
    f'{SIGLIP}/transformer/blocks/0/attn/{n}_proj/kernel': (VISION, VISION)
    for n in ('query', 'key', 'value', 'out')
  },
  **{
    f'{SIGLIP}/transformer/blocks/0/attn/{n}_proj/bias': (VISION,)
    for n in ('query', 'key', 'value', 'out')
  },
  f'{SIGLIP}/transformer/blocks/0/ln1/scale': (VISION,),
  f'{SIGLIP}/transformer/blocks/0/mlp/fc1/kernel': (VISION, 2 * VISION),
  f'{SIGLIP}/transformer/blocks/0/mlp/fc2/kernel': (2 * VISION, VISION),
  f'{SIGLIP}/transformer/encoder_norm/scale': (VISION,),
  **{f'layers/{i}/attn/q_einsum/w': (H, D, HD) for i in range(L)},
  **{f'layers/{i}/attn/kv_einsum/w': (2, K, D, HD) for i in range(L)},
  **{f'layers/{i}/attn/attn_vec_einsum/w': (H, HD, D) for i in range(L)},
  **{f'layers/{i}/attn/_query_norm/scale': (HD,) for i in range(L)},
  **{f'layers/{i}/mlp/gate_proj/kernel': (D, F) for i in range(L)},
  **{f'layers/{i}/mlp/down_proj/kernel': (F, D) for i in range(L)},
  **{f'layers/{i}/pre_attention_norm/scale': (D,) for i in range(L)},
  'final_norm/scale': (D,),
}

PER_LAYER = 8
TUNIX_GEMMA4_PER_LAYER = {
  'embedder/input_embedding': (V, D),
  'embedder/per_layer_input_embedding': (V, L, PER_LAYER),
  'embedder/per_layer_model_projection/w': (D, L, PER_LAYER),
  'embedder/per_layer_projection_norm/scale': (PER_LAYER,),
  **{f'layers/{i}/attn/q_einsum/w': (H, D, HD) for i in range(L)},
  **{f'layers/{i}/per_layer_input_gate/w': (D, PER_LAYER) for i in range(L)},
  **{f'layers/{i}/per_layer_projection/w': (PER_LAYER, D) for i in range(L)},
  'final_norm/scale': (D,),
}

POSITIONS = 128
MAXTEXT_LINEN = {  # scan_layers=True: the layer axis sits at param_scan_axis=1.
  'params/token_embedder/embedding': (V, D),
  'params/decoder/position_embedder/embedding': (POSITIONS, D),
  'params/decoder/layers/pre_self_attention_layer_norm/scale': (D, L),
  'params/decoder/layers/post_self_attention_layer_norm/scale': (D, L),
  'params/decoder/layers/self_attention/query/kernel': (D, L, H, HD),
  'params/decoder/layers/self_attention/key/kernel': (D, L, K, HD),
  'params/decoder/layers/self_attention/value/kernel': (D, L, K, HD),
  'params/decoder/layers/self_attention/out/kernel': (H, L, HD, D),
  'params/decoder/layers/mlp/wi_0/kernel': (D, L, F),
  'params/decoder/layers/mlp/wi_1/kernel': (D, L, F),
  'params/decoder/layers/mlp/wo/kernel': (F, L, D),
  'params/decoder/decoder_norm/scale': (D,),
  'params/decoder/logits_dense/kernel': (D, V),
}
MAXTEXT_TUNIX_ADAPTER = {  # TunixMaxTextAdapter keeps the model as `base`; no collection level.
  'base/' + path.removeprefix('params/'): shape for path, shape in MAXTEXT_LINEN.items()
}
MAXTEXT_GEMMA3_VISION = {
  'params/token_embedder/embedding': (V, D),
  'params/vision_encoder/Gemma3VisionEncoderLayer_0/embedding/kernel': (14, 14, 3, 1152),
  'params/vision_encoder/Gemma3VisionEncoderLayer_0/embedding/bias': (1152,),
  'params/vision_encoder/Gemma3VisionEncoderLayer_0/pos_embedding': (1, 4096, 1152),
  'params/vision_encoder/VisionEmbedder_0/mm_soft_embedding_norm/scale': (1152,),
  'params/vision_encoder/VisionEmbedder_0/mm_input_projection/w': (1152, D),
  'params/decoder/layers/layers_0/self_attention/query/kernel': (D, 1, H, HD),
  'params/decoder/decoder_norm/scale': (D,),
}

FLAX_LM1B = {
  'decoder/Embed_0/embedding': (V, D),
  'decoder/posembed_output/pos_embedding': (1, POSITIONS, D),
  **{
    f'decoder/encoderdecoderblock_{i}/MultiHeadDotProductAttention_0/{n}/kernel': (D, H, HD)
    for i in range(L)
    for n in ('query', 'key', 'value')
  },
  **{f'decoder/encoderdecoderblock_{i}/MlpBlock_0/Dense_0/kernel': (D, F) for i in range(L)},
  **{f'decoder/encoderdecoderblock_{i}/MlpBlock_0/Dense_0/bias': (F,) for i in range(L)},
  'decoder/encoderdecoder_norm/scale': (D,),
  'decoder/logitdense/kernel': (D, V),
  'decoder/logitdense/bias': (V,),
}

HF_FLAX_GPTJ = {
  'transformer/wte/embedding': (V, D),
  **{f'transformer/h/{i}/attn/q_proj/kernel': (D, D) for i in range(L)},
  **{f'transformer/h/{i}/mlp/fc_in/kernel': (D, F) for i in range(L)},
  **{f'transformer/h/{i}/ln_1/scale': (D,) for i in range(L)},
  'transformer/ln_f/scale': (D,),
  'lm_head/kernel': (D, V),
  'lm_head/bias': (V,),
}
HF_FLAX_GPT2 = {  # Tied, with learned positions.
  'transformer/wte/embedding': (V, D),
  'transformer/wpe/embedding': (POSITIONS, D),
  **{f'transformer/h/{i}/attn/c_attn/kernel': (D, 3 * D) for i in range(L)},
  'transformer/ln_f/scale': (D,),
}

HF_FLAX_BERT = {  # Segment types and positions are Embed tables too, but not of tokens.
  'bert/embeddings/word_embeddings/embedding': (V, D),
  'bert/embeddings/position_embeddings/embedding': (POSITIONS, D),
  'bert/embeddings/token_type_embeddings/embedding': (2, D),
  'bert/embeddings/LayerNorm/scale': (D,),
  **{f'bert/encoder/layer/{i}/attention/self/query/kernel': (D, D) for i in range(L)},
  'cls/predictions/transform/dense/kernel': (D, D),
  'cls/predictions/bias': (V,),
}
HF_FLAX_T5 = {  # T5 v1.1: untied head; relative-position buckets are an Embed per stack.
  'shared/embedding': (V, D),
  'encoder/block/0/layer/0/SelfAttention/q/kernel': (D, D),
  'encoder/block/0/layer/0/SelfAttention/relative_attention_bias/embedding': (32, H),
  'decoder/block/0/layer/0/SelfAttention/relative_attention_bias/embedding': (32, H),
  'encoder/final_layer_norm/weight': (D,),
  'lm_head/kernel': (D, V),
}

CASES = {
  'tunix_llama3_tied': (TUNIX_LLAMA3_TIED, {'embedder/input_embedding'}),
  'tunix_llama3_untied': (TUNIX_LLAMA3_UNTIED, {'embedder/input_embedding', 'lm_head/w'}),
  'tunix_qwen3_tied': (TUNIX_QWEN3_TIED, {'embedder/input_embedding'}),
  'tunix_qwen3_untied': (TUNIX_QWEN3_UNTIED, {'embedder/input_embedding', 'lm_head/w'}),
  'tunix_gemma3_vision': (TUNIX_GEMMA3_VISION, {'embedder/input_embedding'}),
  'tunix_gemma4_per_layer': (
    TUNIX_GEMMA4_PER_LAYER,
    {'embedder/input_embedding', 'embedder/per_layer_input_embedding'},
  ),
  'maxtext_linen': (
    MAXTEXT_LINEN,
    {'params/token_embedder/embedding', 'params/decoder/logits_dense/kernel'},
  ),
  'maxtext_tunix_adapter': (
    MAXTEXT_TUNIX_ADAPTER,
    {'base/token_embedder/embedding', 'base/decoder/logits_dense/kernel'},
  ),
  'maxtext_gemma3_vision': (MAXTEXT_GEMMA3_VISION, {'params/token_embedder/embedding'}),
  'flax_lm1b': (FLAX_LM1B, {'decoder/Embed_0/embedding', 'decoder/logitdense/kernel'}),
  'hf_flax_gptj': (HF_FLAX_GPTJ, {'transformer/wte/embedding', 'lm_head/kernel'}),
  'hf_flax_gpt2': (HF_FLAX_GPT2, {'transformer/wte/embedding'}),
  'hf_flax_bert': (HF_FLAX_BERT, {'bert/embeddings/word_embeddings/embedding'}),
  'hf_flax_t5': (HF_FLAX_T5, {'shared/embedding', 'lm_head/kernel'}),
}


@pytest.mark.parametrize('name', sorted(CASES))
@pytest.mark.parametrize('by', ['vocab_size', 'name'])
def test_tables_are_found_exactly(name, by):
  shapes, expected = CASES[name]
  kwargs = {'vocab_size': V} if by == 'vocab_size' else {}
  assert _tables(ember_optax.token_table_labels(_tree(shapes), **kwargs)) == expected


def test_lora_factors_of_a_head_are_not_tables():
  tree = _tree({**TUNIX_QWEN3_UNTIED, **TUNIX_QWEN3_LORA_ONLY})
  for kwargs in ({}, {'vocab_size': V}):
    tables = _tables(ember_optax.token_table_labels(tree, **kwargs))
    assert tables == {'embedder/input_embedding', 'lm_head/w'}


def test_adapter_only_parameters_get_an_error_about_adapters():
  tree = _tree(TUNIX_QWEN3_LORA_ONLY)
  for kwargs in ({}, {'vocab_size': V}):
    with pytest.raises(ValueError, match=r'low-rank adapters only.*LoRA.*body optimizer'):
      ember_optax.token_table_labels(tree, **kwargs)
    with pytest.raises(ValueError, match=r'low-rank adapters only'):
      ember_optax.ember_adamw(1e-3, **kwargs).init(jax.tree.map(jnp.zeros_like, tree))


def test_per_layer_table_state_is_at_most_layers_times_v_plus_p_plus_1():
  params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), _tree(TUNIX_GEMMA4_PER_LAYER))
  state = ember_optax.ember_adamw(1e-3, vocab_size=V).init(params)
  tables = state.inner_states[ember_optax.TABLE_LABEL].inner_state[0]
  per_layer = [tables.row, tables.col, tables.scale]
  floats = sum(s['embedder']['per_layer_input_embedding'].size for s in per_layer)
  assert floats == L * (V + PER_LAYER + 1)


# Equinox modules are dataclass pytrees whose children are attributes (GetAttrKey paths).
@jax.tree_util.register_dataclass
@dataclasses.dataclass
class EqxEmbedding:
  weight: jax.ShapeDtypeStruct


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class EqxLinear:
  weight: jax.ShapeDtypeStruct
  bias: jax.ShapeDtypeStruct | None


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class EqxBlock:
  attn_qkv: EqxLinear
  mlp: EqxLinear


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class EqxGPT:
  embedding: EqxEmbedding
  pos_embedding: EqxEmbedding
  blocks: list[EqxBlock]
  lm_head: EqxLinear


def _sds(*shape):
  return jax.ShapeDtypeStruct(shape, jnp.float32)


def test_equinox_gpt():
  model = EqxGPT(
    embedding=EqxEmbedding(_sds(V, D)),
    pos_embedding=EqxEmbedding(_sds(POSITIONS, D)),
    blocks=[
      EqxBlock(EqxLinear(_sds(3 * D, D), _sds(3 * D)), EqxLinear(_sds(F, D), _sds(F)))
      for _ in range(L)
    ],
    lm_head=EqxLinear(_sds(V, D), None),  # eqx.nn.Linear's weight is (out, in).
  )
  for kwargs in ({}, {'vocab_size': V}):
    tables = _tables(ember_optax.token_table_labels(model, **kwargs))
    assert tables == {'embedding/weight', 'lm_head/weight'}
