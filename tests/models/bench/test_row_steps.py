"""``python -m models.bench.row_steps``: the measures of one step, and a tiny run's files."""

import jax.numpy as jnp
import numpy as np
import pytest

from models.bench import row_steps
from models.reporting import results


def test_step_measures_read_the_moved_rows_against_the_median():
  # Four rows of a (V, D) update: three moved, with RMS 1, 2 and 10 (at lr 0.5), one did not.
  update = jnp.array([[1.0, 1.0], [2.0, 2.0], [10.0, 10.0], [0.0, 0.0]])
  measures = row_steps.step_measures(update, token_axis=0, lr=0.5)
  assert measures['moved'] == 0.75
  assert measures['median_step_per_lr'] == pytest.approx(4.0)  # Median RMS 2, over 0.5.
  assert measures['max_ratio'] == pytest.approx(5.0)
  assert measures['p99_ratio'] == pytest.approx(np.percentile([0.5, 1.0, 5.0], 99))
  # A (D, V) head: the same rows as columns.
  assert row_steps.step_measures(update.T, token_axis=1, lr=0.5) == measures
  assert row_steps.step_measures(jnp.zeros((4, 2)), token_axis=0, lr=0.5) is None
  assert row_steps.step_measures(update, token_axis=0, lr=0.0) is None


@pytest.mark.slow
def test_a_tiny_run_measures_every_table_of_every_run(corpus_dir, cache_dir, tmp_path):
  argv = [
    '--sweep', 'tiny', '--point', 't16-b2', '--lrs', '0.01', '--setups', 'ember', 'adamw',
    '--text', str(corpus_dir), '--cache-dir', str(cache_dir), '--out', str(tmp_path),
  ]  # fmt: skip
  result = row_steps.main(argv)
  saved = results.read_json(tmp_path / 'row_steps.json')
  assert [(r['setup'], r['lr']) for r in saved['runs']] == [('ember', 0.01), ('adamw', 0.01)]
  for run in saved['runs']:
    assert set(run['tables']) == {'token_embed/embedding', 'lm_head/kernel'}
    for table in run['tables'].values():
      series = table['series']
      # The warm-up's first step has rate 0: nothing moves, so it is left out.
      assert series['step'][0] == 2 and series['step'][-1] == saved['steps']
      assert all(ratio >= 1.0 for ratio in series['p99_ratio'])
  ember, adamw = (r['tables']['token_embed/embedding']['mean'] for r in saved['runs'])
  # Ember moves only the rows in the batch; AdamW's momentum keeps earlier rows moving.
  assert ember['moved'] < adamw['moved']
  assert result['table'] in (tmp_path / 'row_steps.md').read_text()
  assert (tmp_path / 'row_steps.png').stat().st_size > 10_000


def test_bad_input_is_one_line_on_stderr(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    row_steps.main(['--sweep', 'tiny', '--point', 'x1-b1', '--out', str(tmp_path)])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1
  assert "--point: unknown point 'x1-b1'; choose from t16-b2 t32-b2 t16-b4" in err


def test_a_table_b2_of_its_own_gets_a_folder_of_its_own():
  assert row_steps.out_folder(row_steps.RowStepsConfig()).name == 'd128-b64'
  config = row_steps.RowStepsConfig(table_b2=0.95)
  assert row_steps.out_folder(config).name == 'd128-b64-table-b2-0.95'
