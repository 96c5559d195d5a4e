"""The base model of post-training: trained once, cached by what it depends on, read back."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from models import pretrain as pretrain_cli
from models.training import pretrained as pretrained_lib
from models.training.loop import params_digest

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def tiny(corpus_dir, cache_dir, tmp_path_factory):
  return pretrained_lib.PretrainConfig(
    preset='tiny',
    steps=6,
    text=str(corpus_dir),
    cache_dir=str(cache_dir),
    pretrained_dir=str(tmp_path_factory.mktemp('pretrained')),
  )


def test_built_once_then_read_back_bitwise(tiny):
  built = pretrained_lib.load_or_pretrain(tiny, verbose=False)
  assert built.built and (built.path / pretrained_lib.INFO_FILE).exists()
  result = built.info['result']
  assert result['setup'] == pretrained_lib.PRETRAIN_SETUP
  assert result['final_val_loss'] < result['initial_val_loss']
  assert params_digest(built.params) == result['params_sha256']
  again = pretrained_lib.load_or_pretrain(tiny, verbose=False)
  assert not again.built and again.path == built.path
  assert params_digest(again.params) == params_digest(built.params)
  assert jax.tree.structure(again.params) == jax.tree.structure(built.params)


def test_the_key_follows_what_the_weights_depend_on(tiny):
  path = pretrained_lib.load_or_pretrain(tiny, verbose=False).path
  other_seed = pretrained_lib.load_or_pretrain(dataclasses.replace(tiny, seed=1), verbose=False)
  assert other_seed.path != path and other_seed.built
  assert not np.array_equal(
    jax.tree.leaves(other_seed.params)[0],
    jax.tree.leaves(pretrained_lib.load_or_pretrain(tiny, verbose=False).params)[0],
  )


def test_an_unfinished_build_is_built_again(tiny):
  first = pretrained_lib.load_or_pretrain(tiny, verbose=False)
  (first.path / pretrained_lib.INFO_FILE).unlink()
  rebuilt = pretrained_lib.load_or_pretrain(tiny, verbose=False)
  assert rebuilt.built and rebuilt.path == first.path
  assert params_digest(rebuilt.params) == first.info['result']['params_sha256']


def test_bad_steps_are_one_line_on_stderr(tiny, capsys):
  with pytest.raises(SystemExit) as exit_info:
    pretrain_cli.main(['--preset', 'tiny', '--steps', '0', '--pretrained-dir', tiny.pretrained_dir])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and '--steps' in err
