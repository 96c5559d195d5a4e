"""The registry: every table optimizer beside every body, clipping first, the state each entry
declares read back, the styles and the default comparisons every program reads."""

from __future__ import annotations

import dataclasses

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ember_optax
from models.nets.gpt import GPT, table_labels
from models.optim import registry
from models.training.config import TrainConfig, resolve
from models.training.loop import Comparison
from models.training.presets import PRESETS


def _is_partition(node) -> bool:
  return isinstance(node, optax.PartitionState)


def _by_label(tree, labels, table: bool) -> list:
  pairs = zip(jax.tree.leaves(tree), jax.tree.leaves(labels), strict=True)
  return [leaf for leaf, label in pairs if (label == ember_optax.TABLE_LABEL) == table]


def _tiny_params():
  cfg = dataclasses.replace(PRESETS['tiny'].model, vocab_size=PRESETS['tiny'].vocab_size)
  return cfg, nnx.state(GPT(cfg, rngs=nnx.Rngs(0)), nnx.Param)


def _optimizer(plan, name):
  return Comparison(plan, None, [], None, 0).optimizer(name)


@pytest.mark.parametrize('setup', [*registry.default_setups('scaling'), 'ember+muon'])
def test_every_setup_clips_the_gradient_first(setup):
  """With clipping, a gradient and the same gradient 1000x longer take the same step."""
  _, params = _tiny_params()
  unit = jax.tree.map(lambda p: jnp.full(p.shape, 1e-3, p.dtype), params)
  unit = jax.tree.map(lambda g: g / optax.tree.norm(unit), unit)  # Global norm exactly 1.
  huge = jax.tree.map(lambda g: 1000 * g, unit)

  def first_step(clip_norm, grads):
    plan = resolve(TrainConfig(preset='tiny', setups=(setup,), clip_norm=clip_norm))
    tx = _optimizer(plan, setup)
    state = tx.init(params)
    for _ in range(2):  # Two steps: past the warm-up's zero learning rate.
      updates, state = tx.update(grads, state, params)
    return jax.tree.leaves(updates) + jax.tree.leaves(state)

  for a, b in zip(first_step(1.0, unit), first_step(1.0, huge), strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-12)
  unclipped = zip(first_step(0.0, unit), first_step(0.0, huge), strict=True)
  assert not all(np.allclose(a, b, rtol=1e-3) for a, b in unclipped)


@pytest.mark.parametrize(
  ('tables', 'body'),
  [(t, b) for t in registry.TABLE_OPTIMIZERS for b in registry.BODIES if not t == b == 'frozen'],
)
def test_every_table_optimizer_keeps_its_state_under_the_table_label(tables, body):
  cfg, params = _tiny_params()
  labels = table_labels(params, cfg)
  tx = registry.make_optimizer(
    registry.Setup(tables, body),
    labels,
    learning_rate=1e-3,
    table_learning_rate=2e-3,
    vocab_size=cfg.vocab_size,
  )
  state = tx.init(params)
  partition = next(s for s in jax.tree.leaves(state, is_leaf=_is_partition) if _is_partition(s))
  assert set(partition.inner_states) == {ember_optax.TABLE_LABEL, ember_optax.BODY_LABEL}
  table_bytes = registry.table_state_bytes(state, labels)
  # What the registry says the entry keeps, per table, and one step count for the tables.
  entry = registry.TABLE_OPTIMIZERS[tables]
  shapes = [leaf.shape for leaf in _by_label(params, labels, table=True)]
  declared = sum(entry.state_numbers(max(shape), min(shape)) for shape in shapes)
  assert len(shapes) == 2 and table_bytes == 4 * (declared + (1 if entry.trains else 0))
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, state, params)
  table_updates = _by_label(updates, labels, table=True)
  body_updates = _by_label(updates, labels, table=False)
  assert all(bool(jnp.all(u == 0)) == (tables == 'frozen') for u in table_updates)
  # A frozen body (tables-only fine-tuning) does not move; any other does.
  assert all(bool(jnp.any(u != 0)) == (body != 'frozen') for u in body_updates if u.size > 1)


def test_adamw_everywhere_is_one_adamw_and_its_table_share_is_the_moments():
  cfg, params = _tiny_params()
  labels = table_labels(params, cfg)
  tx = registry.make_optimizer(registry.Setup('adamw'), labels, learning_rate=1e-3)
  state = tx.init(params)
  assert not any(_is_partition(s) for s in jax.tree.leaves(state, is_leaf=_is_partition))
  assert registry.table_state_bytes(state, labels) == 2 * 2 * cfg.vocab_size * cfg.d_model * 4


def test_table_b2_sets_the_tables_decay_alone():
  cfg, params = _tiny_params()
  labels = table_labels(params, cfg)
  grads = jax.tree.map(jnp.ones_like, params)

  def state_after_a_step(tables, hyper):
    tx = registry.make_optimizer(registry.Setup(tables), labels, learning_rate=1e-3, hyper=hyper)
    return tx.update(grads, tx.init(params), params)[1]

  base = registry.Hyperparameters()
  fast = dataclasses.replace(base, table_b2=0.5)
  same, changed = state_after_a_step('ember', base), state_after_a_step('ember', fast)
  for branch, differs in ((ember_optax.TABLE_LABEL, True), (ember_optax.BODY_LABEL, False)):
    pairs = zip(
      jax.tree.leaves(same.inner_states[branch]),
      jax.tree.leaves(changed.inner_states[branch]),
      strict=True,
    )
    assert any(not np.array_equal(x, y) for x, y in pairs) == differs, branch
  # AdamW tables with a decay of their own are no longer one adamw over every parameter.
  assert not _is_partition(state_after_a_step('adamw', base))
  assert _is_partition(state_after_a_step('adamw', fast))


def test_table_b2_is_left_out_of_saved_settings_at_its_default(tiny_config):
  plan = resolve(tiny_config)
  assert 'table_b2' not in plan.training_settings()  # Runs saved before it existed still match.
  fast = resolve(dataclasses.replace(tiny_config, table_b2=0.99))
  assert fast.training_settings()['table_b2'] == 0.99 and fast.hyper.table_b2 == 0.99


def test_setup_names_and_bad_names():
  assert registry.Setup.parse('ember+muon') == registry.Setup('ember', 'muon')
  assert registry.Setup.parse('rowwise').name == 'rowwise'
  with pytest.raises(ValueError, match='choose from adamw, ember, adafactor, rowwise, frozen'):
    registry.Setup.parse('sgd')
  with pytest.raises(ValueError, match='unknown body optimizer'):
    registry.Setup.parse('ember+lion')
  assert registry.Setup.parse('ember+frozen').name == 'ember+frozen'
  with pytest.raises(ValueError, match='trains nothing'):
    registry.Setup.parse('frozen+frozen')


def test_every_entry_is_drawn_apart_and_named():
  colors = [entry.color for entry in registry.TABLE_OPTIMIZERS.values()]
  styles = [body.line_style for body in registry.BODIES.values()]
  assert len(set(colors)) == len(colors) and len(set(styles)) == len(styles)
  for tables in registry.TABLE_OPTIMIZERS:
    for body in registry.BODIES:
      if tables == body == 'frozen':
        continue
      setup = registry.Setup(tables, body).name
      assert registry.plot_style(setup) == (
        registry.TABLE_OPTIMIZERS[tables].color,
        registry.BODIES[body].line_style,
      )
  assert all(e.label and e.state for e in registry.TABLE_OPTIMIZERS.values())


def test_every_program_compares_ember_with_peers_by_default():
  assert registry.default_setups('train') == ('adamw', 'ember', 'adafactor')
  for comparison in registry.COMPARISONS:
    setups = registry.default_setups(comparison)
    assert 'ember' in setups and len(setups) >= 2, comparison
    for name in setups:
      registry.Setup.parse(name)
  timed = registry.default_setups('step')
  assert all(registry.TABLE_OPTIMIZERS[name].table_accesses for name in timed)
  with pytest.raises(ValueError, match='unknown comparison'):
    registry.default_setups('pretrain')


def test_an_entry_naming_an_unknown_comparison_is_refused():
  entry = dataclasses.replace(registry.TABLE_OPTIMIZERS['ember'], name='e2', comparisons=('sfT',))
  with pytest.raises(ValueError, match="e2: unknown comparisons \\['sfT'\\]"):
    registry._registry(entry)


@pytest.mark.parametrize('tables', registry.sparse_tables())
def test_each_sparse_form_moves_the_touched_rows_as_the_dense_form_does(tables):
  table = jax.random.normal(jax.random.key(0), (10, 4))
  hyper = registry.Hyperparameters()
  dense = registry.table_optimizer(tables, 1e-2, hyper, vocab_size=10)
  sparse = registry.sparse_table_optimizer(tables, 1e-2, hyper)
  dense_state, sparse_state = dense.init(table), sparse.init(table)
  for step, ids in enumerate(([1, 3, 3], [3, 7])):
    rows = jax.random.normal(jax.random.key(step + 1), (len(ids), 4))
    ids = jnp.asarray(ids)
    grad = jnp.zeros_like(table).at[ids].add(rows)
    dense_updates, dense_state = dense.update(grad, dense_state, table)
    updates, sparse_state = sparse.update(ember_optax.IndexedRows(ids, rows), sparse_state, table)
    touched = updates.ids[updates.ids < 10]
    np.testing.assert_allclose(
      updates.rows[: touched.size], dense_updates[touched], rtol=1e-5, atol=1e-7
    )
  with pytest.raises(ValueError, match='has no sparse form; choose from ember, rowwise'):
    registry.sparse_table_optimizer('adamw', 1e-2)
