"""The main job's loop on the tiny preset: it trains, records, and is deterministic; and the
shared run loop under it (divergence, resumption) on a toy step."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

import ember_optax
from models import train as train_lib
from models.reporting import results as results_lib
from models.training.config import DEFAULT_SETUPS, resolve
from models.training.loop import Comparison
from models.training.presets import PRESETS


def test_initial_loss_is_at_most_uniform(tiny_config):
  """With the unigram bias the untrained model predicts the unigram distribution; without it,
  about the uniform one. Either way the loss starts at or below ln V (+ 0.1)."""
  corpus = Comparison.build(resolve(tiny_config), verbose=False).corpus
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


def test_tiny_preset_trains_under_each_setup(tiny_results):
  results, _ = tiny_results
  runs = results['runs']
  assert {r['setup'] for r in runs} == set(DEFAULT_SETUPS)
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
  saved = results_lib.read_json(out / 'results.json')
  assert saved['config']['preset'] == 'tiny'
  assert saved['plan']['steps'] == PRESETS['tiny'].steps
  env = saved['environment']
  for package in ('jax', 'jaxlib', 'optax', 'flax', 'ember_optax'):
    assert env['versions'][package], package
  assert env['versions']['ember_optax'] == ember_optax.__version__
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
  assert all(f'| {setup} |' in saved['table'] for setup in DEFAULT_SETUPS)
  assert (out / 'loss_curves.png').stat().st_size > 1000


def test_runs_are_deterministic(tiny_config, tiny_results):
  results, _ = tiny_results
  config = dataclasses.replace(tiny_config, setups=('ember',), seeds=(1,))
  (again,) = train_lib.run(config, verbose=False)['runs']
  (first,) = [r for r in results['runs'] if r['setup'] == 'ember' and r['seed'] == 1]
  assert again['params_sha256'] == first['params_sha256']
  assert again['final_val_loss'] == first['final_val_loss']


def test_a_run_may_start_from_given_params_on_other_batches(tiny_config):
  """Fine-tuning's loop: the runs start from ``start_params``, draw ``train_source``'s batches
  and report ``extra_evals``; every setup of a seed still sees the same batches."""
  from flax import nnx

  from models.optim.registry import Setup
  from models.training import step as step_lib
  from models.training.loop import train_one

  config = dataclasses.replace(tiny_config, setups=('ember',), seeds=(0,), steps=3)
  plan = resolve(config)
  base = Comparison.build(plan, verbose=False)
  _, start = nnx.split(base.init_model(7), nnx.Param)
  fixed = base.val_batches[0]
  drawn = []

  def source(seed, begin):
    drawn.append((seed, begin))
    return iter([fixed] * (plan.steps - begin))

  tuned = dataclasses.replace(
    base, start_params=start, train_source=source, extra_evals={'first_batch': [fixed]}
  )
  result, params = train_one(tuned, Setup('ember'), 0, log=lambda *a: None, return_params=True)
  graphdef, _ = nnx.split(base.init_model(0), nnx.Param)
  # It started from the given parameters, not seed 0's initialization.
  assert result['initial_val_loss'] == pytest.approx(
    step_lib.evaluate(graphdef, start, base.curve_batches, base.rare_mask)[0], rel=1e-6
  )
  assert drawn == [(0, 0)] and len(result['train_loss_curve']) == plan.steps
  assert result['first_batch_loss'] == pytest.approx(
    step_lib.evaluate(graphdef, params, [fixed], base.rare_mask)[0], rel=1e-6
  )
  assert result['first_batch_loss'] < result['train_loss_curve'][0][1]


def _toy_run(steps: int, checkpoints=None, log=None, losses=None, stop_before=None):
  """``run_steps`` on a toy step: the parameters add each batch; ``losses[number]`` replaces a
  step's loss; fetching step ``stop_before``'s batch raises ``KeyboardInterrupt``."""
  import jax.numpy as jnp

  from models.training.loop import run_steps

  def step(number, state, batch):
    params = {'w': state['params']['w'] + batch}
    loss = (losses or {}).get(number, float(number))
    return {'params': params, 'opt_state': {'n': state['opt_state']['n'] + 1}}, {'loss': loss}

  def batches(start):
    for number in range(start + 1, steps + 1):
      if number == stop_before:
        raise KeyboardInterrupt
      yield jnp.full((2,), number, jnp.float32)

  def record(number, state, metrics, progress):
    progress['curve'].append([number, metrics['loss']])

  state = {
    'params': {'w': jnp.zeros((2,), jnp.float32)},
    'opt_state': {'n': jnp.zeros((), jnp.int32)},
  }
  return run_steps(
    '[toy] run',
    state,
    steps=steps,
    step=step,
    batches=batches,
    begin=lambda state: {'curve': [[0, -1.0]]},
    record=record,
    finish=lambda run: {'curve': run.progress['curve'], **run.summary()},
    checkpoints=checkpoints,
    log=log if log is not None else (lambda line: None),
  )


def test_the_shared_loop_ends_a_diverged_run_as_a_result():
  lines = []
  result, state = _toy_run(5, log=lines.append, losses={3: float('nan')})
  assert lines == ['[toy] run: loss is nan at step 3; stopping this run']
  assert result['diverged_at_step'] == 3
  assert result['curve'] == [[0, -1.0], [1, 1.0], [2, 2.0]]  # Nothing recorded from step 3 on.
  np.testing.assert_array_equal(state['params']['w'], [6.0, 6.0])  # Steps 1 + 2 + 3.


def test_the_shared_loop_resumes_from_its_last_checkpoint_and_says_so(tmp_path):
  from models.training.checkpoints import RunCheckpoints
  from models.training.loop import params_digest

  through, state = _toy_run(6)
  assert through['diverged_at_step'] is None and len(through['curve']) == 7
  assert through['params_sha256'] == params_digest(state['params'])
  with pytest.raises(KeyboardInterrupt):
    _toy_run(6, RunCheckpoints(tmp_path, 'toy', every=2), stop_before=6)
  lines = []
  resumed, _ = _toy_run(6, RunCheckpoints(tmp_path, 'toy', every=2), log=lines.append)
  assert lines == [f'[toy] run: resumed from step 4 of 6 ({tmp_path / "toy"})']
  assert resumed['curve'] == through['curve']
  assert resumed['params_sha256'] == through['params_sha256']
  lines.clear()
  again, state = _toy_run(6, RunCheckpoints(tmp_path, 'toy', every=2), log=lines.append)
  assert state is None and again == resumed
  assert lines == [f'[toy] run: finished earlier, read from {tmp_path / "toy" / "result.json"}']
