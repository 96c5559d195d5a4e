"""Ember inside Tunix: PeftTrainer (full SFT, LoRA with trainable tables), GRPO, Tunix's config.

Runs on Tunix's own model classes (Qwen 3) at a tiny random configuration, on CPU, with nothing
downloaded. Tunix is optional: `.ci/run` runs this file in an environment of its own with
`google-tunix` installed; elsewhere it is skipped.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

tunix = pytest.importorskip('tunix')

from flax import nnx  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
import qwix  # noqa: E402
from tunix.cli import config as tunix_config  # noqa: E402
from tunix.models.gemma4 import model as gemma4_lib  # noqa: E402
from tunix.models.qwen3 import model as qwen3_lib  # noqa: E402
from tunix.rl import rl_cluster as rl_cluster_lib  # noqa: E402
from tunix.rl.grpo import grpo_learner  # noqa: E402
from tunix.rl.rollout import base_rollout  # noqa: E402
from tunix.sft import peft_trainer  # noqa: E402
from tunix.sft import utils as sft_utils  # noqa: E402

import ember_optax  # noqa: E402

pytestmark = pytest.mark.slow

V, D, STEPS, BATCH, LENGTH = 257, 32, 20, 4, 16
LAYERS, PER_LAYER = 2, 8


def _qwen3(seed=0, tied=False):
  config = qwen3_lib.ModelConfig(
    num_layers=LAYERS,
    vocab_size=V,
    embed_dim=D,
    hidden_dim=64,
    num_heads=4,
    head_dim=8,
    num_kv_heads=2,
    rope_theta=10_000,
    norm_eps=1e-6,
    use_tied_embedding=tied,
  )
  return _draw_zero_matrices(qwen3_lib.Qwen3(config, rngs=nnx.Rngs(seed)), seed)


def _gemma4(seed=0):
  config = gemma4_lib.ModelConfig(
    num_layers=LAYERS,
    num_embed=V,
    embed_dim=D,
    hidden_dim=64,
    num_heads=4,
    head_dim=8,
    num_kv_heads=2,
    sliding_window_size=16,
    per_layer_input_dim=PER_LAYER,
    global_key_size=16,
  )
  return _draw_zero_matrices(gemma4_lib.Gemma4(config, rngs=nnx.Rngs(seed)), seed)


def _draw_zero_matrices(model, seed):
  # Tunix initializes the MLP kernels to zeros (a checkpoint overwrites them). Gate, up and down
  # all zero get zero gradients forever, so a model trained from its random init needs them
  # drawn: the same draw for the same seed.
  key = jax.random.key(1000 + seed)
  for i, (_, variable) in enumerate(nnx.to_flat_state(nnx.state(model, nnx.Param))):
    value = variable.get_value()
    if value.ndim >= 2 and not jnp.any(value):
      variable.set_value(0.05 * jax.random.normal(jax.random.fold_in(key, i), value.shape))
  return model


def _with_lora(model, seed=0, tables_trainable=False):
  provider = qwix.LoraProvider(
    module_path='.*q_proj|.*k_proj|.*v_proj|.*o_proj|.*gate_proj|.*up_proj|.*down_proj',
    rank=4,
    alpha=8.0,
  )
  model = qwix.apply_lora_to_model(
    model, provider, rngs=nnx.Rngs(seed + 1), **model.get_model_input()
  )
  if tables_trainable:
    # PeftTrainer trains the nnx.LoRAParam variables of a LoRA model: re-typing the token table
    # as one makes it trainable beside the adapters (its sharding metadata is kept).
    table = model.embedder.input_embedding
    model.embedder.input_embedding = nnx.LoRAParam(table.get_value(), **table.get_metadata())
  return model


def _batches():
  rng = np.random.default_rng(0)
  starts = rng.integers(0, V, size=(STEPS, BATCH, 1))
  strides = rng.integers(1, 5, size=(STEPS, BATCH, 1))
  tokens = ((starts + strides * np.arange(LENGTH)) % V).astype(np.int32)  # learnable sequences
  return [
    peft_trainer.TrainingInput(input_tokens=t, input_mask=np.ones((BATCH, LENGTH), bool))
    for t in tokens
  ]


def _model_input(batch):
  mask = batch.input_mask
  return dict(
    input_tokens=batch.input_tokens,
    input_mask=mask,
    positions=sft_utils.build_positions_from_mask(mask),
    attention_mask=sft_utils.make_causal_attn_mask(mask),
  )


def _trainer(model, optimizer, checkpoint_dir, max_steps):
  config = peft_trainer.TrainingConfig(
    eval_every_n_steps=1000,
    max_steps=max_steps,
    checkpoint_root_directory=checkpoint_dir,
    checkpointing_options=ocp.CheckpointManagerOptions(save_interval_steps=5, max_to_keep=2),
    pbar_description=None,
  )
  trainer = peft_trainer.PeftTrainer(model, optimizer, config)
  return trainer.with_gen_model_input_fn(_model_input)


def _losses(trainer, prefix=''):
  return list(trainer.metrics_logger.get_metric_history(prefix, 'loss', 'train'))


def _arrays(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _ember_state(trainer):
  opt_state = trainer.optimizer.opt_state
  is_ember = lambda x: isinstance(x, ember_optax.ScaleByEmberState)  # noqa: E731
  (state,) = [x for x in jax.tree.leaves(opt_state, is_leaf=is_ember) if is_ember(x)]
  return state


def _table_floats(state):
  """Ember's statistics per table: arrays only (optax.MaskedNode marks the body's leaves)."""
  tables = {}
  for name in ('row', 'col', 'scale'):
    for path, leaf in jax.tree_util.tree_leaves_with_path(getattr(state, name)):
      key = '/'.join(
        str(getattr(k, 'key', getattr(k, 'name', k)))
        for k in path
        if getattr(k, 'name', None) != 'value'
      )
      tables[key] = tables.get(key, 0) + np.size(leaf)
  return tables


def test_full_parameter_sft_trains_and_resumes_bitwise(tmp_path):
  def optimizer():
    return ember_optax.ember_adamw(3e-3, vocab_size=V)

  data = _batches()
  first = _trainer(_qwen3(), optimizer(), str(tmp_path / 'resumed'), STEPS // 2)
  first.train(data)
  after_first = _arrays(nnx.state(first.model, nnx.Param))
  first_opt = _arrays(nnx.state(first.optimizer, nnx.optimizer.OptState))
  assert _table_floats(_ember_state(first)) == {
    'embedder/input_embedding': V + D + 1,
    'lm_head/w': D + V + 1,
  }

  # A fresh model with other weights: the checkpoint must bring back the first run's exactly.
  resumed = _trainer(_qwen3(seed=5), optimizer(), str(tmp_path / 'resumed'), STEPS)
  assert resumed.train_steps == STEPS // 2
  for got, want in zip(_arrays(nnx.state(resumed.model, nnx.Param)), after_first, strict=True):
    np.testing.assert_array_equal(got, want)
  for got, want in zip(
    _arrays(nnx.state(resumed.optimizer, nnx.optimizer.OptState)), first_opt, strict=True
  ):
    np.testing.assert_array_equal(got, want)
  resumed.train(data)

  straight = _trainer(_qwen3(), optimizer(), str(tmp_path / 'straight'), STEPS)
  straight.train(data)
  for got, want in zip(
    _arrays(nnx.state(resumed.model, nnx.Param)),
    _arrays(nnx.state(straight.model, nnx.Param)),
    strict=True,
  ):
    np.testing.assert_array_equal(got, want)
  losses = _losses(straight)
  assert losses == _losses(first) + _losses(resumed)
  assert losses[-1] < losses[0] - 0.2, losses

  adamw = _trainer(_qwen3(), optax.adamw(3e-3), str(tmp_path / 'adamw'), STEPS)
  adamw.train(data)
  print(
    f'Tunix SFT, {STEPS} steps: ember_adamw {losses[0]:.3f} -> {losses[-1]:.3f}, '
    f'adamw -> {_losses(adamw)[-1]:.3f}'
  )


def test_gemma4_per_layer_table_is_factored_per_layer(tmp_path):
  trainer = _trainer(
    _gemma4(), ember_optax.ember_adamw(3e-3, vocab_size=V), str(tmp_path / 'gemma4'), STEPS
  )
  trainer.train(_batches())
  # (V, L, P) as L tables (V, P), and the projections inside the embedder stay with AdamW.
  assert _table_floats(_ember_state(trainer)) == {
    'embedder/input_embedding': V + D + 1,
    'embedder/per_layer_input_embedding': LAYERS * (V + PER_LAYER + 1),
  }
  losses = _losses(trainer)
  assert losses[-1] < losses[0], losses


def test_lora_body_with_trainable_tables(tmp_path):
  model = _with_lora(_qwen3(tied=True), tables_trainable=True)
  frozen = nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))
  frozen_before = _arrays(nnx.state(model, frozen))
  trainer = _trainer(
    model, ember_optax.ember_adamw(3e-3, vocab_size=V), str(tmp_path / 'lora'), STEPS
  )
  assert trainer._lora_enabled  # Tunix optimizes nnx.LoRAParam only.
  trainer.train(_batches())
  # The tied table goes to Ember, and no LoRA factor does.
  assert _table_floats(_ember_state(trainer)) == {'embedder/input_embedding': V + D + 1}
  for got, want in zip(_arrays(nnx.state(trainer.model, frozen)), frozen_before, strict=True):
    np.testing.assert_array_equal(got, want)
  losses = _losses(trainer)
  assert losses[-1] < losses[0] - 0.1, losses


def test_adapter_only_training_says_what_to_do(tmp_path):
  model = _with_lora(_qwen3())
  with pytest.raises(ValueError, match='low-rank adapters only'):
    _trainer(model, ember_optax.ember_adamw(3e-3, vocab_size=V), str(tmp_path / 'x'), 2)


def test_tunix_config_selects_ember_by_name():
  # The one line a Tunix user runs before Tunix parses its config: Tunix looks optimizers up
  # with getattr(optax, opt_type) and builds them through optax.inject_hyperparams.
  optax.ember_adamw = ember_optax.ember_adamw
  try:
    hyperparameters = object.__new__(tunix_config.HyperParameters)
    hyperparameters.config = {
      'optimizer_config': {'opt_type': 'ember_adamw', 'learning_rate': 3e-3, 'vocab_size': V}
    }
    optimizer = hyperparameters.create_optimizer('optimizer_config')
  finally:
    del optax.ember_adamw
  model = _qwen3()
  params = nnx.state(model, nnx.Param)
  state = optimizer.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, state = jax.jit(optimizer.update)(grads, state, params)
  assert jax.tree.structure(updates) == jax.tree.structure(grads)
  tables = state.inner_state.inner_states[ember_optax.TABLE_LABEL].inner_state[0]
  assert tables.row['embedder']['input_embedding'].shape == (V,)


class _CharTokenizer:
  """The methods Tunix's TokenizerAdapter calls: printable ASCII as ids 3..97."""

  pad, bos, eos, offset = 0, 1, 2, 29

  def encode(self, text, **_):
    return [ord(c) - self.offset for c in text if 32 <= ord(c) <= 126]

  def decode(self, ids, **_):
    return ''.join(chr(i + self.offset) if 3 <= i <= 97 else '' for i in ids)

  def bos_id(self):
    return self.bos

  def eos_id(self):
    return self.eos

  def pad_id(self):
    return self.pad


def test_grpo_learner_steps_with_ember():
  actor, reference = _qwen3(), _qwen3()
  before = _arrays(nnx.state(actor, nnx.Param))
  mesh = jax.make_mesh((1, 1), ('fsdp', 'tp'), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  roles = (rl_cluster_lib.Role.ACTOR, rl_cluster_lib.Role.REFERENCE, rl_cluster_lib.Role.ROLLOUT)
  cluster = rl_cluster_lib.RLCluster(
    actor=actor,
    reference=reference,
    tokenizer=_CharTokenizer(),
    cluster_config=rl_cluster_lib.ClusterConfig(
      role_to_mesh={role: mesh for role in roles},
      rollout_engine='vanilla',
      offload_to_cpu=False,
      training_config=rl_cluster_lib.RLTrainingConfig(
        actor_optimizer=ember_optax.ember_adamw(3e-3, vocab_size=V),
        eval_every_n_steps=1000,
        max_steps=2,
        pbar_description=None,
      ),
      rollout_config=base_rollout.RolloutConfig(
        max_tokens_to_generate=8, max_prompt_length=16, kv_cache_size=32, temperature=0.9
      ),
    ),
  )
  learner = grpo_learner.GRPOLearner(
    rl_cluster=cluster,
    reward_fns=lambda prompts, completions, **_: [float(len(set(c))) for c in completions],
    algo_config=grpo_learner.GRPOConfig(num_generations=2, num_iterations=1, beta=0.04),
  )
  prompts = np.array(['abc', 'hello', 'xyz', 'aaaa'])
  with mesh:
    learner.train([{'prompts': prompts[:2]}, {'prompts': prompts[2:]}])
  trainer = cluster.actor_trainer
  assert trainer.train_steps == 2
  after = _arrays(nnx.state(trainer.model, nnx.Param))
  assert all(np.all(np.isfinite(x)) for x in after)
  assert sum(not np.array_equal(a, b) for a, b in zip(before, after, strict=True)) == len(after)
  assert _table_floats(_ember_state(trainer)) == {
    'embedder/input_embedding': V + D + 1,
    'lm_head/w': D + V + 1,
  }
