"""``python -m models.bench.tunix_sft``: our GPT fine-tuned in Tunix's PeftTrainer and in our loop.

Tunix is optional: `.ci/run` runs this file again in the environment that has it, where the two
loops are compared; elsewhere the program must say how to install it.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from models.bench import tunix_sft
from models.reporting import results as results_lib

HAS_TUNIX = importlib.util.find_spec('tunix') is not None


def _args(post_training_args, root, *more):
  return post_training_args(root, '--pretrain-steps', '6', '--steps', '5', *more)


def test_an_unknown_setup_is_refused_before_anything_else(post_training_args, tmp_path, refused):
  args = _args(post_training_args, tmp_path, '--setups', 'lion')
  refused(tunix_sft.main, args, tunix_sft.PROG, "unknown table optimizer 'lion'")
  assert not (tmp_path / 'pretrained').exists() and not (tmp_path / 'out').exists()


@pytest.mark.skipif(HAS_TUNIX, reason='Tunix is installed here')
def test_without_tunix_it_says_how_to_install_it(post_training_args, tmp_path, refused):
  args = _args(post_training_args, tmp_path)
  refused(tunix_sft.main, args, tunix_sft.PROG, "pip install 'ember-optax[tunix]'")
  assert not (tmp_path / 'pretrained').exists()


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TUNIX, reason='needs Tunix (pip install ember-optax[tunix])')
def test_peft_trainer_trains_our_gpt_as_our_loop_does(post_training_args, tmp_path):
  setups = ['ember', 'adamw', 'rowwise+frozen']
  results = tunix_sft.main(_args(post_training_args, tmp_path, '--setups', *setups))
  saved = results_lib.read_json(tmp_path / 'out' / 'tunix_sft.json')  # Strict JSON, or this raises.
  assert [r['setup'] for r in saved['runs']] == setups
  for run in results['runs']:
    assert run['steps'] == run['tunix_steps'] == 5, run['setup']
    # The same optimizer on the same batches: the two loops differ by round-off only (XLA
    # fuses the two jitted steps differently), never by a step, a batch or a routing.
    assert run['max_table_difference'] <= 1e-5 * run['max_param_magnitude'], run
    assert run['max_param_difference'] <= 1e-3 * run['max_param_magnitude'], run
    np.testing.assert_allclose(run['tunix_train_losses'], run['ours_train_losses'], rtol=1e-5)
    assert run['ours_held_out_loss'] == pytest.approx(run['tunix_held_out_loss'], abs=1e-4)
    assert run['ours_step_s'] > 0 and run['tunix_step_s'] > 0
  assert 'PeftTrainer / ours' in saved['table']
