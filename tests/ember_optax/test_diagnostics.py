"""Tests of ember_optax.diagnostics on hand-made cases with known answers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ember_optax
from ember_optax import diagnostics


class TestRowStepRatios:
  def test_uniform_steps_have_ratio_one(self):
    update = jnp.full((50, 8), 0.3)
    np.testing.assert_allclose(diagnostics.row_step_ratios(update), np.ones(50), rtol=1e-6)

  def test_known_ratios_and_zero_rows(self):
    # RMS per row: 1, 2, 1, 100, 0; the median over moving rows (1, 1, 2, 100) is 1.5.
    update = jnp.array([[1.0, -1.0], [2.0, 2.0], [-1.0, 1.0], [100.0, 100.0], [0.0, 0.0]])
    np.testing.assert_allclose(
      diagnostics.row_step_ratios(update),
      [1 / 1.5, 2 / 1.5, 1 / 1.5, 100 / 1.5, 0.0],
      rtol=1e-6,
    )

  def test_token_axis_one_matches_transpose(self):
    update = jax.random.normal(jax.random.key(0), (40, 6))
    np.testing.assert_allclose(
      diagnostics.row_step_ratios(update.T, token_axis=1),
      diagnostics.row_step_ratios(update),
      rtol=1e-6,
    )
    np.testing.assert_allclose(
      diagnostics.row_rms(update.T, token_axis=-1), diagnostics.row_rms(update), rtol=1e-6
    )

  def test_where_selects_reference_rows(self):
    update = jnp.array([[1.0], [1.0], [4.0], [4.0], [4.0]])
    ratios = diagnostics.row_step_ratios(update, where=jnp.array([1, 1, 0, 0, 0], bool))
    np.testing.assert_allclose(ratios, [1, 1, 4, 4, 4], rtol=1e-6)

  def test_scale_invariant(self):
    update = jax.random.normal(jax.random.key(1), (30, 4))
    np.testing.assert_allclose(
      diagnostics.row_step_ratios(1e-4 * update),
      diagnostics.row_step_ratios(update),
      rtol=1e-5,
    )

  def test_no_moving_row_gives_nan(self):
    assert np.all(np.isnan(diagnostics.row_step_ratios(jnp.zeros((3, 2)))))

  def test_jit(self):
    update = jax.random.normal(jax.random.key(2), (64, 8))
    mask = jnp.arange(64) % 2 == 0
    np.testing.assert_allclose(
      jax.jit(diagnostics.row_step_ratios)(update, where=mask),
      diagnostics.row_step_ratios(update, where=mask),
      rtol=1e-6,
    )

  def test_rejects_non_matrix(self):
    with pytest.raises(ValueError, match='2-D'):
      diagnostics.row_rms(jnp.zeros((2, 3, 4)))


class TestTrajectories:
  def test_straight_line_scores_one(self):
    direction = jnp.array([0.3, -1.0, 2.0])
    # Uneven steps along one direction: still a straight ray.
    path = jnp.array([0.0, 0.1, 0.5, 0.6, 2.0])[:, None] * direction + 1.0
    assert float(diagnostics.trajectory_straightness(path)) == pytest.approx(1.0, abs=1e-6)
    assert float(diagnostics.trajectory_principal_share(path)) == pytest.approx(1.0, abs=1e-6)

  def test_back_and_forth_on_a_line(self):
    # Out 2, back 1: displacement 1 over path length 3, but all variance on one line.
    path = jnp.array([[0.0, 0.0], [2.0, 0.0], [1.0, 0.0]])
    assert float(diagnostics.trajectory_straightness(path)) == pytest.approx(1 / 3, rel=1e-6)
    assert float(diagnostics.trajectory_principal_share(path)) == pytest.approx(1.0, abs=1e-6)

  def test_square_orbit(self):
    # Three sides of a square centred on 0: variance split evenly over two axes.
    path = jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    assert float(diagnostics.trajectory_straightness(path)) == pytest.approx(1 / 3, rel=1e-6)
    assert float(diagnostics.trajectory_principal_share(path)) == pytest.approx(0.5, abs=1e-6)

  def test_right_angle(self):
    path = jnp.array([[0.0, 0.0], [3.0, 0.0], [3.0, 4.0]])
    assert float(diagnostics.trajectory_straightness(path)) == pytest.approx(5 / 7, rel=1e-6)

  def test_table_of_tokens_and_token_axis(self):
    steps = 6
    t = jnp.linspace(0.0, 1.0, steps)[:, None]
    straight = t * jnp.array([1.0, 2.0, 0.0])
    zigzag = jnp.stack([t[:, 0], (jnp.arange(steps) % 2).astype(jnp.float32), 0 * t[:, 0]], -1)
    still = jnp.zeros((steps, 3))
    snapshots = jnp.stack([straight, zigzag, still], axis=1)  # (T, V=3, D=3)
    s = diagnostics.trajectory_straightness(snapshots)
    share = diagnostics.trajectory_principal_share(snapshots)
    assert s.shape == share.shape == (3,)
    assert float(s[0]) == pytest.approx(1.0, abs=1e-6)
    assert float(share[0]) == pytest.approx(1.0, abs=1e-6)
    assert float(s[1]) < 0.3
    assert float(share[1]) < 0.9
    # A token that never moved has no defined straightness.
    assert np.isnan(s[2]) and np.isnan(share[2])
    # The same snapshots stored as (T, D, V), like an LM head kernel.
    transposed = jnp.swapaxes(snapshots, 1, 2)
    np.testing.assert_allclose(
      diagnostics.trajectory_straightness(transposed, token_axis=1), s, rtol=1e-6
    )
    np.testing.assert_allclose(
      diagnostics.trajectory_principal_share(transposed, token_axis=1), share, rtol=1e-6
    )

  def test_random_walk_is_not_straight(self):
    walk = jnp.cumsum(jax.random.normal(jax.random.key(0), (400, 32)), axis=0)
    assert float(diagnostics.trajectory_straightness(walk)) < 0.2

  def test_rejects_bad_shape(self):
    with pytest.raises(ValueError, match='snapshots'):
      diagnostics.trajectory_straightness(jnp.zeros((2, 3, 4, 5)))


class TestEffectiveRank:
  def test_rank_one_is_one(self):
    u = jax.random.normal(jax.random.key(0), (200,))
    v = jax.random.normal(jax.random.key(1), (16,))
    assert float(diagnostics.effective_rank(jnp.outer(u, v))) == pytest.approx(1.0, abs=1e-3)

  @pytest.mark.parametrize('n', [1, 4, 37])
  def test_identity_is_full_rank(self, n):
    assert float(diagnostics.effective_rank(jnp.eye(n))) == pytest.approx(n, rel=1e-5)

  def test_two_equal_singular_values(self):
    matrix = jnp.diag(jnp.array([5.0, 5.0, 0.0, 0.0]))
    assert float(diagnostics.effective_rank(matrix)) == pytest.approx(2.0, rel=1e-5)

  def test_known_spectrum(self):
    # Singular values 3 and 1: p = (3/4, 1/4), entropy 0.5623..., erank = 1.7548...
    matrix = jnp.array([[3.0, 0.0], [0.0, -1.0], [0.0, 0.0]])
    p = np.array([0.75, 0.25])
    expected = np.exp(-np.sum(p * np.log(p)))
    assert float(diagnostics.effective_rank(matrix)) == pytest.approx(expected, rel=1e-5)

  def test_invariant_to_scale_and_rotation(self):
    x = jax.random.normal(jax.random.key(2), (30, 10))
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(3), (30, 30)))
    reference = float(diagnostics.effective_rank(x))
    assert float(diagnostics.effective_rank(7.0 * q @ x)) == pytest.approx(reference, rel=1e-4)
    assert 1.0 < reference < 10.0

  def test_zero_matrix_and_batch(self):
    assert float(diagnostics.effective_rank(jnp.zeros((5, 3)))) == 0.0
    batch = jnp.stack([jnp.eye(3), jnp.diag(jnp.array([1.0, 0.0, 0.0]))])
    np.testing.assert_allclose(diagnostics.effective_rank(batch), [3.0, 1.0], rtol=1e-5)
    np.testing.assert_allclose(jax.jit(diagnostics.effective_rank)(batch), [3.0, 1.0], rtol=1e-5)

  def test_rejects_vector(self):
    with pytest.raises(ValueError, match='matrix'):
      diagnostics.effective_rank(jnp.ones(3))


def _params(vocab=1000, width=64):
  return {
    'embed': {'embedding': jnp.zeros((vocab, width))},
    'mlp': {'kernel': jnp.zeros((width, 2 * width)), 'bias': jnp.zeros(2 * width)},
    'lm_head': {'kernel': jnp.zeros((width, vocab))},
  }


class TestStateBytes:
  def test_tree_bytes(self):
    tree = {
      'a': jnp.zeros((3, 4), jnp.float32),
      'b': np.zeros(5, np.float64),
      'c': jax.ShapeDtypeStruct((2, 2), jnp.bfloat16),
      'd': None,
      'e': 3,
      'f': optax.MaskedNode(),
    }
    assert diagnostics.tree_bytes(tree) == 3 * 4 * 4 + 5 * 8 + 2 * 2 * 2

  def test_adam_is_two_floats_per_parameter(self):
    params = _params()
    n = sum(x.size for x in jax.tree.leaves(params))
    state = optax.adam(1e-3).init(params)
    assert diagnostics.tree_bytes(state) == 2 * 4 * n + 4  # mu, nu and the step count.

  def test_ember_adamw_groups(self):
    vocab, width = 1000, 64
    params = _params(vocab, width)
    tx = ember_optax.ember_adamw(1e-3, vocab_size=vocab)
    for state in (tx.init(params), jax.eval_shape(tx.init, params)):
      groups = diagnostics.state_bytes_by_group(state)
      # Ember: V + D + 1 floats per table (two tables) and its step count; MaskedNodes are free.
      assert groups['token_table'] == 4 * (2 * (vocab + width + 1) + 1)
      body = width * 2 * width + 2 * width
      assert groups['body'] == 4 * (2 * body + 1)
      assert set(groups) == {'token_table', 'body'}
      assert sum(groups.values()) == diagnostics.tree_bytes(state)

  def test_single_adamw_split_by_labels(self):
    vocab, width = 1000, 64
    params = _params(vocab, width)
    labels = ember_optax.token_table_labels(params)
    groups = diagnostics.state_bytes_by_group(optax.adamw(1e-3).init(params), labels)
    assert groups == {
      'token_table': 4 * 2 * (2 * vocab * width),
      'body': 4 * 2 * (width * 2 * width + 2 * width),
      'other': 4,
    }

  def test_partition_with_labels_and_custom_names(self):
    params = _params()
    labels = jax.tree.map(lambda _: 'frozen', params)
    labels['embed']['embedding'] = 'tables'
    tx = optax.partition({'tables': optax.adam(1e-3), 'frozen': optax.set_to_zero()}, labels)
    groups = diagnostics.state_bytes_by_group(tx.init(params), labels)
    assert groups == {'frozen': 0, 'tables': 4 * 2 * 1000 * 64 + 4}

  def test_chained_partition_is_found(self):
    params = _params()
    tx = optax.chain(optax.clip_by_global_norm(1.0), ember_optax.ember_adamw(1e-3, vocab_size=1000))
    groups = diagnostics.state_bytes_by_group(tx.init(params))
    assert set(groups) == {'token_table', 'body'}

  def test_without_partition_or_labels_raises(self):
    with pytest.raises(ValueError, match='labels='):
      diagnostics.state_bytes_by_group(optax.adam(1e-3).init(_params()))

  def test_group_sizes(self):
    params = _params(100, 8)
    labels = ember_optax.token_table_labels(params)
    assert diagnostics.group_sizes(params, labels) == {
      'token_table': 2 * 100 * 8,
      'body': 8 * 16 + 16,
    }

  def test_nnx_optimizer_state(self):
    nnx = pytest.importorskip('flax.nnx')

    class Model(nnx.Module):
      def __init__(self, rngs):
        self.embed = nnx.Embed(500, 16, rngs=rngs)
        self.mlp = nnx.Linear(16, 32, rngs=rngs)

    model = Model(nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    labels = ember_optax.token_table_labels(params)
    split = nnx.Optimizer(model, ember_optax.ember_adamw(1e-3), wrt=nnx.Param)
    assert diagnostics.state_bytes_by_group(split.opt_state) == {
      'token_table': 4 * (500 + 16 + 1 + 1),
      'body': 4 * (2 * (16 * 32 + 32) + 1),
    }
    adam = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    groups = diagnostics.state_bytes_by_group(adam.opt_state, labels)
    assert groups == {'token_table': 4 * 2 * 500 * 16, 'body': 4 * 2 * (16 * 32 + 32), 'other': 4}


def test_module_is_importable_as_attribute_path():
  import ember_optax.diagnostics as module

  assert module is diagnostics
  assert set(module.__all__) <= set(dir(module))
