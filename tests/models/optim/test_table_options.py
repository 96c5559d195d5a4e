"""A setup's table options (``ember,head=adamw,b2=0.99+muon``): the names, and that each option
changes the tables' update as it says and nothing else."""

from __future__ import annotations

import dataclasses
import re

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ember_optax
from models import train
from models.nets.gpt import GPT, HEAD_PATH, table_labels
from models.optim import registry, setups
from models.training.config import TrainConfig, resolve
from models.training.presets import PRESETS

Setup = setups.Setup


@pytest.mark.parametrize(
  ('given', 'name'),
  [
    ('ember', 'ember'),
    ('ember,head=adamw+muon', 'ember,head=adamw+muon'),
    ('ember,head_lr=4,head=adamw+muon', 'ember,head=adamw,head_lr=4+muon'),
    ('ember,every=2,b2=0.990', 'ember,b2=0.99,every=2'),
    ('adamw,b1=0+muon', 'adamw,b1=0+muon'),
    ('ember,eps=1e-10,warmup=60+muon', 'ember,eps=1e-10,warmup=60+muon'),
  ],
)
def test_names_are_canonical_and_read_back(given, name):
  setup = Setup.parse(given)
  assert setup.name == name and Setup.parse(name) == setup


@pytest.mark.parametrize(
  ('name', 'message'),
  [
    ('ember,lr=3', "is not OPTION=VALUE with OPTION one of ('head'"),
    ('ember,b2', 'is not OPTION=VALUE'),
    ('ember,b2=0.9,b2=0.99', 'option b2 is given twice'),
    ('ember,b2=high', 'b2=high: not a number'),
    ('ember,b2=1', 'b2=1.0 must be in [0, 1)'),
    ('ember,b1=0', 'b1 is the first moment of AdamW tables'),
    ('ember,head=ember', 'repeats the tables'),
    ('ember,head=sgd', 'unknown head optimizer'),
    ('ember,every=0', 'every=0 must be >= 1'),
    ('ember,head_lr=4', 'head_lr is the rate of a head with an optimizer of its own'),
    ('ember,head=adamw,head_lr=-1', 'head_lr=-1.0 must be >= 0'),
    ('ember,warmup=-1', 'warmup=-1 must be >= 0'),
  ],
)
def test_bad_options_are_refused_by_name(name, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    Setup.parse(name)


@pytest.fixture(scope='module')
def tiny():
  cfg = dataclasses.replace(PRESETS['tiny'].model, vocab_size=PRESETS['tiny'].vocab_size)
  params = nnx.state(GPT(cfg, rngs=nnx.Rngs(0)), nnx.Param)
  grads = [
    jax.tree.map(lambda p, k=k: jax.random.normal(jax.random.key(k), p.shape), params)
    for k in range(2)
  ]
  return cfg, params, grads


def _updates(setup, labels, params, grads, learning_rate=1e-2, table_learning_rate=None):
  tx = registry.make_optimizer(setup, labels, learning_rate, table_learning_rate)
  state, updates = tx.init(params), []
  for grad in grads:
    update, state = tx.update(grad, state, params)
    updates.append(update)
  return updates, state


def _leaf(tree, path: str):
  """The leaf at ``path`` (``lm_head/kernel``) of an ``nnx.State``."""
  node = tree
  for key in path.split('/'):
    node = node[int(key) if key.isdigit() else key]
  return np.asarray(node[...])


TABLES = ('token_embed/embedding', HEAD_PATH)
BODY = 'blocks/0/mlp/down/kernel'  # A matrix of the body.


def test_the_head_takes_an_optimizer_of_its_own(tiny):
  cfg, params, grads = tiny
  split = table_labels(params, cfg, head_label=registry.HEAD_LABEL)
  plain = table_labels(params, cfg)
  mine, state = _updates(Setup('ember', head='adamw'), split, params, grads)
  ember, _ = _updates(Setup('ember'), plain, params, grads)
  adam, _ = _updates(Setup('adamw'), plain, params, grads, table_learning_rate=1e-2)
  for step in range(2):
    np.testing.assert_array_equal(_leaf(mine[step], TABLES[0]), _leaf(ember[step], TABLES[0]))
    np.testing.assert_allclose(
      _leaf(mine[step], HEAD_PATH), _leaf(adam[step], HEAD_PATH), rtol=1e-6
    )
    np.testing.assert_array_equal(_leaf(mine[step], BODY), _leaf(ember[step], BODY))
  # The head keeps Adam's two moments, the input table Ember's statistics.
  v, d = cfg.vocab_size, cfg.d_model
  assert registry.table_state_bytes(state, split) > 2 * v * d * 4
  assert registry.table_state_bytes(state, split) < 2 * v * d * 4 + 2 * (v + d + 1) * 4 + 64


def test_head_lr_scales_the_heads_rate_alone(tiny):
  cfg, params, grads = tiny
  split = table_labels(params, cfg, head_label=registry.HEAD_LABEL)
  schedule = optax.linear_schedule(1e-2, 5e-3, 2)  # The rate scales, a schedule too.
  scaled, _ = _updates(
    Setup('ember', head='adamw', head_lr=4.0), split, params, grads, 1e-2, schedule
  )
  same, _ = _updates(Setup('ember', head='adamw'), split, params, grads, 1e-2, schedule)
  for step in range(2):
    np.testing.assert_allclose(
      _leaf(scaled[step], HEAD_PATH), 4 * _leaf(same[step], HEAD_PATH), rtol=1e-6
    )
    for path in (TABLES[0], BODY):
      np.testing.assert_array_equal(_leaf(scaled[step], path), _leaf(same[step], path))


def test_a_head_setup_without_a_head_label_is_refused(tiny):
  cfg, params, _ = tiny
  setup, labels = Setup('ember', head='adamw'), table_labels(params, cfg)
  with pytest.raises(ValueError, match="the labels name no 'head_table'"):
    registry.make_optimizer(setup, labels, 1e-2)  # Labels given as a tree: at once.
  tx = registry.make_optimizer(setup, lambda p: table_labels(p, cfg), 1e-2)
  with pytest.raises(ValueError, match="the labels name no 'head_table'"):
    tx.init(params)  # As a function of the params: at init.
  with pytest.raises(ValueError, match='tie_embeddings'):
    table_labels(params, dataclasses.replace(cfg, tie_embeddings=True), head_label='head')


def test_b1_sets_the_tables_momentum_alone(tiny):
  cfg, params, grads = tiny
  labels = table_labels(params, cfg)
  mine, _ = _updates(Setup('adamw', b1=0.0), labels, params, grads)
  with_momentum, _ = _updates(Setup('adamw'), labels, params, grads, table_learning_rate=1e-2)
  no_momentum = optax.adamw(1e-2, b1=0.0, weight_decay=0.0)
  head = {'w': jnp.asarray(_leaf(params, HEAD_PATH))}
  state = no_momentum.init(head)
  for step, grad in enumerate(grads):
    expected, state = no_momentum.update({'w': jnp.asarray(_leaf(grad, HEAD_PATH))}, state, head)
    np.testing.assert_allclose(_leaf(mine[step], HEAD_PATH), expected['w'], rtol=1e-6)
    # The body keeps the shared b1.
    np.testing.assert_array_equal(_leaf(mine[step], BODY), _leaf(with_momentum[step], BODY))
  assert not np.allclose(_leaf(mine[1], HEAD_PATH), _leaf(with_momentum[1], HEAD_PATH))


def test_every_updates_the_tables_on_the_mean_gradient_with_the_rate_of_its_step(tiny):
  cfg, params, grads = tiny
  labels = table_labels(params, cfg)

  def rate(count):
    return 1e-2 * (count + 1)

  mine, state = _updates(Setup('ember', every=2), labels, params, grads, rate, rate)
  assert not np.any(_leaf(mine[0], TABLES[0]))  # The first step only accumulates.
  mean = jax.tree.map(lambda a, b: (a + b) / 2, *grads)
  reference = ember_optax.ember(2e-2)  # Step 1's rate, on the mean of steps 0 and 1.
  table = {'w': jnp.asarray(_leaf(params, TABLES[0]))}
  expected, _ = reference.update(
    {'w': jnp.asarray(_leaf(mean, TABLES[0]))}, reference.init(table), table
  )
  np.testing.assert_allclose(_leaf(mine[1], TABLES[0]), expected['w'], rtol=1e-5, atol=1e-7)
  # The accumulator is one table-sized buffer per table.
  v, d = cfg.vocab_size, cfg.d_model
  assert registry.table_state_bytes(state, labels) >= 2 * v * d * 4


def test_warmup_ramps_the_tables_alone(tiny):
  cfg, params, grads = tiny
  labels = table_labels(params, cfg)
  mine, _ = _updates(Setup('ember', warmup=4), labels, params, grads[:1])
  plain, _ = _updates(Setup('ember'), labels, params, grads[:1], table_learning_rate=1e-2)
  for path in TABLES:
    np.testing.assert_allclose(_leaf(mine[0], path), _leaf(plain[0], path) / 4, rtol=1e-6)
  np.testing.assert_array_equal(_leaf(mine[0], BODY), _leaf(plain[0], BODY))


def test_the_command_line_takes_setups_with_options(tiny_config):
  name = 'ember,b2=0.99+muon'
  args = train.build_parser().parse_args(['--setups', name, '--table-lr-for', f'{name}=0.03'])
  assert dict(args.table_lr_for) == {name: 0.03}
  plan = resolve(
    dataclasses.replace(tiny_config, setups=(name,), table_lr_for={name: 0.03}, lr=0.01)
  )
  assert plan.setups == (Setup('ember', 'muon', b2=0.99),)
  assert plan.learning_rates[name] == (0.01, 0.03)
  assert isinstance(tiny_config, TrainConfig)
