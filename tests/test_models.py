"""Tests of models/: the GPT, the data pipeline, the recipe and the main job, on the tiny preset."""

from __future__ import annotations

import dataclasses
import json
import math
import random

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ember_optax
from models.data import corpus as data_lib
from models import reporting, stats
from models import train as train_lib
from models.training.config import TrainConfig, resolve
from models.nets.gpt import GPT, GPTConfig, table_labels, token_table_paths
from models.optimizers import make_optimizer
from models.training.presets import PRESETS, SETUPS

# --- model -------------------------------------------------------------------------------------


@pytest.mark.parametrize('tie', [False, True])
def test_gpt_shapes_and_causality(tie):
  cfg = GPTConfig(
    vocab_size=300, max_len=16, d_model=32, n_layers=2, n_heads=4, d_ff=64, tie_embeddings=tie
  )
  model = GPT(cfg, rngs=nnx.Rngs(0))
  forward = nnx.jit(lambda model, tokens: model(tokens))  # One compile instead of op by op.
  tokens = jnp.arange(2 * 16).reshape(2, 16) % 300
  logits = forward(model, tokens)
  assert logits.shape == (2, 16, 300)
  # Changing the last token must not change the logits of earlier positions.
  changed = forward(model, tokens.at[:, -1].set(7))
  np.testing.assert_allclose(logits[:, :-1], changed[:, :-1], atol=1e-5)
  params = nnx.state(model, nnx.Param)
  assert ('lm_head' in params) != tie


def test_logit_bias_sets_the_untrained_models_prediction():
  cfg = GPTConfig(vocab_size=300, max_len=8, d_model=32, n_layers=1, n_heads=4, d_ff=64)
  prior = jax.nn.log_softmax(jax.random.normal(jax.random.key(0), (300,)))
  model = GPT(cfg, rngs=nnx.Rngs(0), logit_bias_init=prior)
  # Zero the head: the logits are then the bias alone, at every position.
  model.lm_head.kernel[...] = jnp.zeros_like(model.lm_head.kernel[...])
  logits = model(jnp.zeros((1, 8), jnp.int32))
  np.testing.assert_allclose(logits[0, 3], prior, rtol=1e-6)
  with pytest.raises(ValueError, match='shape'):
    GPT(cfg, rngs=nnx.Rngs(0), logit_bias_init=jnp.zeros(299))
  with pytest.raises(ValueError, match='logit_bias is False'):
    GPT(dataclasses.replace(cfg, logit_bias=False), rngs=nnx.Rngs(0), logit_bias_init=prior)


def _table_paths(params, labels) -> set[str]:
  """The ``a/b`` paths labelled ``"token_table"``."""
  flat = jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(labels))
  return {
    jax.tree_util.keystr(p, simple=True, separator='/')
    for p, label in flat
    if label == ember_optax.TABLE_LABEL
  }


@pytest.mark.parametrize('tie', [False, True])
def test_library_finds_the_models_token_tables(tie):
  """ember_optax's detection, by name and by vocabulary size, finds the model's own tables.

  Neither takes ``pos_embed`` (positions, not tokens) or the head's bias.
  """
  for name in ('tiny', 'small'):
    cfg = dataclasses.replace(
      PRESETS[name].model, vocab_size=PRESETS[name].vocab_size, tie_embeddings=tie
    )
    params = nnx.state(GPT(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    ours = _table_paths(params, table_labels(params, cfg))
    theirs = _table_paths(params, ember_optax.token_table_labels(params, vocab_size=cfg.vocab_size))
    assert ours == token_table_paths(cfg)
    assert theirs == ours, f'{name}: {sorted(theirs)}'
    by_name = _table_paths(params, ember_optax.token_table_labels(params))
    assert by_name == ours, f'{name}: {sorted(by_name)}'


def test_presets_keep_body_dims_off_the_vocab_size():
  """Detection by shape would mistake a body weight with a vocab-sized axis for a table."""
  for name, p in PRESETS.items():
    m = p.model
    assert p.vocab_size not in {m.max_len, m.d_model, m.d_ff, 3 * m.d_model}, name
    assert p.seq_len <= m.max_len, name
    assert set(p.lr) == set(SETUPS), name


# --- data --------------------------------------------------------------------------------------


def test_stdlib_split_is_code_only_deterministic_and_disjoint():
  root, files = data_lib.list_files(None)
  assert len(files) > 500  # The stdlib is there: no download needed.
  # Code only: no test suite, installed packages or the documentation's prose (pydoc_data).
  assert not any(f.startswith(('test/', 'pydoc_data/')) or 'site-packages' in f for f in files)
  train, val = data_lib.split_files(files, 0.05)
  assert not set(train) & set(val)
  assert sorted(train + val) == files
  assert 0.02 < len(val) / len(files) < 0.1
  # The split depends on the paths only, not on their order.
  shuffled = files[:]
  random.Random(0).shuffle(shuffled)
  train2, val2 = data_lib.split_files(shuffled, 0.05)
  assert set(train2) == set(train) and set(val2) == set(val)
  # And is the same again on another call (no hidden randomness).
  assert data_lib.split_files(files, 0.05) == (train, val)


def test_split_keeps_both_sides_non_empty():
  train, val = data_lib.split_files(['a.txt', 'b.txt'], 0.001)
  assert len(train) == 1 and len(val) == 1


def test_tokenizer_cache_is_reused(corpus_dir, tmp_path, monkeypatch):
  first = data_lib.load_corpus(corpus_dir, vocab_size=512, cache_dir=tmp_path)
  assert not first.cache_hit
  assert (first.cache_dir / 'tokenizer.json').exists()

  def no_training(*args, **kwargs):
    raise AssertionError('the tokenizer was trained again instead of loaded from the cache')

  monkeypatch.setattr(data_lib, '_train_tokenizer', no_training)
  second = data_lib.load_corpus(corpus_dir, vocab_size=512, cache_dir=tmp_path)
  assert second.cache_hit and second.cache_dir == first.cache_dir
  np.testing.assert_array_equal(first.train_tokens, second.train_tokens)
  np.testing.assert_array_equal(first.val_tokens, second.val_tokens)
  monkeypatch.undo()
  # Another vocabulary size is another cache entry.
  other = data_lib.load_corpus(corpus_dir, vocab_size=400, cache_dir=tmp_path)
  assert not other.cache_hit and other.cache_dir != first.cache_dir


def test_text_folder_corpus(corpus_dir, corpus_files, cache_dir):
  corpus = data_lib.load_corpus(corpus_dir, vocab_size=512, cache_dir=cache_dir)
  info = corpus.info
  assert info['files'] == corpus_files  # The hidden file is skipped.
  assert info['train_files'] + info['val_files'] == info['files']
  assert info['train_files'] >= 1 and info['val_files'] >= 1
  assert corpus.train_tokens.max() < 512 and corpus.val_tokens.max() < 512
  # The tokenizer round-trips real text.
  tok = corpus.tokenizer()
  text = 'def f(x):\n    return x + 1\n'
  assert tok.decode(tok.encode(text).ids) == text
  # Rare tokens: exactly the less frequent half of the vocabulary.
  rare = corpus.rare_token_mask()
  assert rare.sum() == 256
  assert corpus.train_counts[rare].max() <= corpus.train_counts[~rare].min()
  # The unigram prior is a log distribution that follows the counts.
  prior = corpus.log_unigram()
  assert prior.shape == (512,) and np.exp(prior.astype(np.float64)).sum() == pytest.approx(1.0)
  assert np.all(np.diff(prior[np.argsort(corpus.train_counts)]) >= 0)


def test_single_file_corpus(tmp_path):
  path = tmp_path / 'one.txt'
  path.write_text(''.join(f'line {i}: the quick brown fox {i * i}\n' for i in range(3000)))
  corpus = data_lib.load_corpus(path, vocab_size=300, cache_dir=tmp_path / 'cache')
  assert corpus.info['files'] == 1
  assert corpus.val_tokens.size > 0 and corpus.train_tokens.size > 10 * corpus.val_tokens.size


def test_batches_are_deterministic_and_resume_where_they_stopped():
  tokens = np.arange(10_000, dtype=np.uint16)
  a = list(data_lib.train_batches(tokens, batch_size=4, seq_len=16, steps=3, seed=1))
  b = list(data_lib.train_batches(tokens, batch_size=4, seq_len=16, steps=3, seed=1))
  c = list(data_lib.train_batches(tokens, batch_size=4, seq_len=16, steps=3, seed=2))
  for (xa, ya), (xb, yb) in zip(a, b, strict=True):
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)
    np.testing.assert_array_equal(xa[:, 1:], ya[:, :-1])  # Targets are inputs shifted by one.
  assert not np.array_equal(a[0][0], c[0][0])
  rest = list(data_lib.train_batches(tokens, batch_size=4, seq_len=16, steps=3, seed=1, start=2))
  assert len(rest) == 1
  np.testing.assert_array_equal(rest[0][0], a[2][0])
  val = data_lib.val_batches(tokens, batch_size=4, seq_len=16, num_batches=3)
  assert len(val) == 3 and val[0][0].shape == (4, 16)


def test_batches_cover_the_training_stream_evenly():
  """One window in each of steps * batch_size equal strata of the stream, in a random order."""
  tokens = np.arange(100_000, dtype=np.int64)  # A token's value is its position.
  batches = list(data_lib.train_batches(tokens, batch_size=4, seq_len=16, steps=50, seed=3))
  starts = np.concatenate([inputs[:, 0] for inputs, _ in batches])
  edges = np.linspace(0, tokens.size - 16 - 1, starts.size + 1)
  ordered = np.sort(starts)
  assert np.all(np.floor(edges[:-1]) <= ordered) and np.all(ordered < edges[1:])
  assert not np.all(np.diff(starts) > 0)  # Dealt in a random order, not front to back.


# --- the recipe --------------------------------------------------------------------------------


@pytest.mark.parametrize('setup', SETUPS)
def test_every_setup_clips_the_gradient_first(setup):
  """With clipping, a gradient and the same gradient 1000x longer take the same step."""
  cfg = dataclasses.replace(PRESETS['tiny'].model, vocab_size=PRESETS['tiny'].vocab_size)
  params = nnx.state(GPT(cfg, rngs=nnx.Rngs(0)), nnx.Param)
  unit = jax.tree.map(lambda p: jnp.full(p.shape, 1e-3, p.dtype), params)
  unit = jax.tree.map(lambda g: g / optax.tree.norm(unit), unit)  # Global norm exactly 1.
  huge = jax.tree.map(lambda g: 1000 * g, unit)

  def first_step(clip_norm, grads):
    plan = resolve(TrainConfig(preset='tiny', setups=(setup,), clip_norm=clip_norm))
    tx = make_optimizer(setup, plan)
    state = tx.init(params)
    for _ in range(2):  # Two steps: past the warm-up's zero learning rate.
      updates, state = tx.update(grads, state, params)
    return jax.tree.leaves(updates) + jax.tree.leaves(state)

  for a, b in zip(first_step(1.0, unit), first_step(1.0, huge), strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-12)
  unclipped = zip(first_step(0.0, unit), first_step(0.0, huge), strict=True)
  assert not all(np.allclose(a, b, rtol=1e-3) for a, b in unclipped)


def test_adafactor_tables_are_not_stored_as_ember():
  plan = resolve(TrainConfig(preset='tiny'))
  cfg = plan.model
  params = nnx.state(GPT(cfg, rngs=nnx.Rngs(0)), nnx.Param)
  for setup, table_label in (('adafactor', 'adafactor'), ('ember', ember_optax.TABLE_LABEL)):
    state = make_optimizer(setup, plan).init(params)
    partition = next(s for s in state if isinstance(s, optax.PartitionState))
    assert set(partition.inner_states) == {table_label, ember_optax.BODY_LABEL}, setup


def test_initial_loss_is_at_most_uniform(tiny_config):
  """With the unigram bias the untrained model predicts the unigram distribution; without it,
  about the uniform one. Either way the loss starts at or below ln V (+ 0.1)."""
  corpus = train_lib.load_corpus(resolve(tiny_config), verbose=False)
  for unigram_bias in (True, False):
    config = dataclasses.replace(
      tiny_config, setups=('adamw',), seeds=(0,), steps=1, unigram_bias=unigram_bias
    )
    (run,) = train_lib.run(config, corpus=corpus, verbose=False)['runs']
    assert run['initial_val_loss'] <= math.log(512) + 0.1, unigram_bias
    if unigram_bias:
      counts = corpus.train_counts + 1.0
      unigram = -np.log(counts / counts.sum())[corpus.val_tokens.astype(np.int64)].mean()
      assert run['initial_val_loss'] == pytest.approx(unigram, abs=0.15)


# --- the main job ------------------------------------------------------------------------------


def test_tiny_preset_trains_under_each_setup(tiny_results):
  results, _ = tiny_results
  runs = results['runs']
  assert {r['setup'] for r in runs} == set(SETUPS)
  assert {r['seed'] for r in runs} == {0, 1}
  for r in runs:
    start = r['initial_val_loss']
    # Well below the unigram start: the model learns more than token frequencies.
    assert r['final_val_loss'] < start - 0.75, (r['setup'], start, r['final_val_loss'])
    assert r['final_train_loss'] < r['train_loss_curve'][0][1] - 0.75, r['setup']
    curve = [v for _, v in r['val_loss_curve']]
    assert curve[-1] < curve[len(curve) // 2], (r['setup'], curve)  # Still falling.
    assert np.isfinite(r['rare_val_loss'])
  # Same initialization for every setup of a seed: identical starting validation loss.
  for seed in (0, 1):
    assert len({r['initial_val_loss'] for r in runs if r['seed'] == seed}) == 1
  by_setup = {r['setup']: r for r in runs if r['seed'] == 0}
  # Ember keeps V + D + 1 floats per table (plus step counts) instead of AdamW's 2 V D.
  assert by_setup['ember']['table_state_bytes'] < by_setup['adamw']['table_state_bytes'] / 50
  assert by_setup['ember']['model_state_bytes'] < by_setup['adamw']['model_state_bytes']


def test_results_json_records_runs_summary_and_environment(tiny_results):
  results, out = tiny_results
  saved = json.loads((out / 'results.json').read_text())
  assert saved['config']['preset'] == 'tiny'
  assert saved['plan']['steps'] == PRESETS['tiny'].steps
  env = saved['environment']
  for package in ('jax', 'jaxlib', 'optax', 'flax', 'ember_optax'):
    assert env['versions'][package], package
  assert env['versions']['ember_optax'] == ember_optax.__version__
  assert isinstance(env['cpu_kernel']['available'], bool) and env['cpu_kernel']['reason']
  assert env['corpus_cache'] and env['device']
  for r in saved['runs']:
    assert len(r['train_loss_curve']) == PRESETS['tiny'].steps
    # The plot's last validation point is the final evaluation that the table reports.
    assert r['val_loss_curve'][-1] == [PRESETS['tiny'].steps, r['final_val_loss']]
  for setup, s in saved['summary'].items():
    final = [r['final_val_loss'] for r in saved['runs'] if r['setup'] == setup]
    assert s['final_val_loss']['mean'] == pytest.approx(np.mean(final))
    assert s['final_val_loss']['spread'] == pytest.approx(max(final) - min(final))
  ember = {r['seed']: r['final_val_loss'] for r in saved['runs'] if r['setup'] == 'ember'}
  adamw = {r['seed']: r['final_val_loss'] for r in saved['runs'] if r['setup'] == 'adamw'}
  paired = saved['paired']['adamw']['final_val_loss']
  assert paired['values'] == pytest.approx([ember[s] - adamw[s] for s in (0, 1)])
  assert all(f'| {setup} |' in saved['table'] for setup in SETUPS)
  assert (out / 'loss_curves.png').stat().st_size > 1000


def test_runs_are_deterministic(tiny_config, tiny_results):
  results, _ = tiny_results
  config = dataclasses.replace(tiny_config, setups=('ember',), seeds=(1,))
  (again,) = train_lib.run(config, verbose=False)['runs']
  (first,) = [r for r in results['runs'] if r['setup'] == 'ember' and r['seed'] == 1]
  assert again['params_sha256'] == first['params_sha256']
  assert again['final_val_loss'] == first['final_val_loss']


# --- statistics --------------------------------------------------------------------------------


def test_describe_and_verdicts():
  d = stats.describe([1.0, 2.0, 3.0, 4.0])
  assert d['mean'] == 2.5 and d['spread'] == 3.0
  assert d['std'] == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
  half = 3.182 * d['std'] / 2  # t_{0.975, 3} * s / sqrt(4)
  assert d['ci95'] == pytest.approx([2.5 - half, 2.5 + half])
  assert stats.verdict([-0.3, -0.1]) == 'better'
  assert stats.verdict([-0.1, 0.2]) == 'no different'
  assert stats.verdict([0.1, 0.2]) == 'worse'
  assert stats.verdict(stats.describe([0.5])['ci95']) == 'undetermined'
  assert stats.t_quantile_975(1) == 12.706 and stats.t_quantile_975(1000) == 1.96


def test_paired_differences_pair_by_seed():
  def run(setup, seed, loss):
    return {'setup': setup, 'seed': seed, 'final_val_loss': loss, 'rare_val_loss': 2 * loss}

  runs = {
    'ember': [run('ember', s, 4.0 + 0.01 * s) for s in range(3)],
    'adamw': [run('adamw', s, 4.1 + 0.01 * s + 0.001 * (s % 2)) for s in (2, 1, 0)],
  }
  paired = reporting.paired_differences(runs)['adamw']
  assert paired['seeds'] == [0, 1, 2]
  assert paired['final_val_loss']['values'] == pytest.approx([-0.1, -0.101, -0.1])
  assert paired['final_val_loss']['verdict'] == 'better'
