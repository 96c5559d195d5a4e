"""Resumable runs: a comparison stopped part-way and resumed ends bitwise equal to one that ran
through (Orbax checkpoints, tiny preset)."""

from __future__ import annotations

import dataclasses

import pytest

from models import train as train_lib
from models.data import corpus as data_lib
from models.training import loop
from models.training.config import ConfigError


@pytest.mark.slow
def test_resume_equals_uninterrupted(tiny_config, tmp_path, monkeypatch, capsys):
  config = dataclasses.replace(
    tiny_config, setups=('adamw', 'ember'), seeds=(0,), steps=30, eval_every=10
  )
  through = train_lib.run(config, verbose=False)['runs']

  resumable = dataclasses.replace(
    config, checkpoint_dir=str(tmp_path / 'ckpt'), checkpoint_every=10
  )
  # The first run (adamw) finishes; the second (ember) stops at step 25, after checkpoints at
  # steps 10 and 20.
  calls = {'n': 0}
  real = data_lib.train_batches

  def second_run_stops(*args, **kwargs):
    calls['n'] += 1
    for i, batch in enumerate(real(*args, **kwargs)):
      if calls['n'] == 2 and i == 25:
        raise KeyboardInterrupt
      yield batch

  monkeypatch.setattr(loop.data_lib, 'train_batches', second_run_stops)
  with pytest.raises(KeyboardInterrupt):
    train_lib.run(resumable, verbose=False)
  monkeypatch.undo()
  assert (tmp_path / 'ckpt' / 'adamw-seed0' / 'result.json').exists()
  assert not (tmp_path / 'ckpt' / 'ember-seed0' / 'result.json').exists()

  capsys.readouterr()
  resumed = train_lib.run(dataclasses.replace(resumable, progress=False))['runs']
  out = capsys.readouterr().out
  assert '[train] adamw seed 0: finished earlier, read from' in out
  assert '[train] ember seed 0: resumed from step 20 of 30' in out
  for a, b in zip(through, resumed, strict=True):
    assert a['params_sha256'] == b['params_sha256'], a['setup']
    for key in ('final_val_loss', 'rare_val_loss', 'train_loss_curve', 'val_loss_curve'):
      assert a[key] == b[key], (a['setup'], key)


def test_resuming_with_other_settings_is_refused(tiny_config, tmp_path):
  config = dataclasses.replace(
    tiny_config,
    setups=('ember',),
    seeds=(0,),
    steps=4,
    checkpoint_dir=str(tmp_path),
    checkpoint_every=2,
  )
  train_lib.run(config, verbose=False)
  with pytest.raises(ConfigError, match='other settings .*steps'):
    train_lib.run(dataclasses.replace(config, steps=5), verbose=False)
