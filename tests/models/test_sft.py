"""``python -m models.sft``: the fine-tuning comparison end to end at the tiny preset."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models import sft
from models.reporting import results as results_lib

pytestmark = pytest.mark.slow


def _args(post_training_args, root, *more):
  """The shared post-training flags, with a short run kept in ``root/out/checkpoints``."""
  out = root / 'out'
  return post_training_args(
    root, '--pretrain-steps', '6', '--steps', '4', '--checkpoint-dir', str(out / 'checkpoints'),
    '--no-progress', *more,
  )  # fmt: skip


@pytest.fixture(scope='module')
def finished(post_training_args, tmp_path_factory):
  root = tmp_path_factory.mktemp('sft')
  out = root / 'out'
  setups = ['--setups', 'adamw', 'ember', 'frozen', 'ember+frozen', 'rowwise+frozen']
  args = _args(post_training_args, root, *setups)
  return args, out, sft.main(args)


def test_writes_strict_results_tables_and_plots(finished):
  _, out, results = finished
  for name in ('results.json', 'results.md', 'frontier.png', 'curves.png'):
    assert (out / name).exists(), name
  saved = results_lib.read_json(out / 'results.json')  # Strict JSON, or this raises.
  assert set(saved['best']) == {'adamw', 'ember', 'frozen', 'ember+frozen', 'rowwise+frozen'}
  for s in saved['best'].values():
    assert np.isfinite(s['final_val_loss']['mean']) and np.isfinite(s['pretrain_val_loss']['mean'])
  # Ember is compared within its body only.
  assert set(saved['paired']['ember']) == {'adamw', 'frozen'}
  assert set(saved['paired']['ember+frozen']) == {'rowwise+frozen'}
  assert saved['best']['frozen']['table_state_bytes'] == 0
  ratio = saved['targets']['table_state_ratio_adamw_over_ember']
  assert ratio > 10
  assert 'Base model' in (out / 'results.md').read_text()


def test_every_run_starts_from_the_base_model_and_trains_what_it_says(finished):
  _, _, results = finished
  base = results['base_model']
  runs = {r['setup']: r for r in results['runs']}
  # A frozen body with frozen tables never appears; tables-only runs move only the tables, so
  # they forget less than the whole model does.
  for run in runs.values():
    assert run['final_val_loss'] < base['held_out_response_loss']
  assert runs['ember+frozen']['model_state_bytes'] == runs['ember+frozen']['table_state_bytes']


def test_the_same_command_reads_the_runs_back(finished):
  args, out, results = finished
  again = sft.main(args)
  assert [r['params_sha256'] for r in again['runs']] == [
    r['params_sha256'] for r in results['runs']
  ]
  assert json.loads((out / 'results.json').read_text())['best'].keys() == results['best'].keys()


@pytest.mark.parametrize(
  'more, message',
  [
    (['--lrs', '-1'], '--lrs must be positive'),
    (['--setups', 'frozen+frozen'], 'frozen+frozen'),
    (['--best-seeds', '0'], '--best-seeds must not repeat a seed of --seeds'),
  ],
)
def test_bad_input_is_one_line_before_anything_trains(
  post_training_args, tmp_path, refused, more, message
):
  args = _args(post_training_args, tmp_path, *more)
  refused(sft.main, args, sft.PROG, message)
  assert not (tmp_path / 'pretrained').exists() and not (tmp_path / 'out').exists()


def test_a_model_unlike_the_base_model_is_refused_before_pretraining(
  post_training_args, tmp_path, capsys
):
  args = _args(post_training_args, tmp_path, '--tie-embeddings')
  with pytest.raises(SystemExit):
    sft.main(args)
  assert "differs from the base model in ['tie_embeddings']" in capsys.readouterr().err
  assert not (tmp_path / 'pretrained').exists()
