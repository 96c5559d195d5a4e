"""``models.training.finetune``: the fine-tuning settings group and the held-out batches."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import numpy as np

from models import sft
from models.bench import tunix_sft
from models.data import docstring_pairs
from models.training.config import TrainConfig
from models.training.finetune import FineTuneOptions, padded_batches
from models.training.presets import PRESETS
from models.training.search import SearchConfig

ROOT = Path(__file__).resolve().parents[2]


def test_filled_takes_the_presets_fine_tuning_defaults_where_none_was_given():
  defaults = PRESETS['small'].sft
  filled = sft.SFTConfig(preset='small', extend=0).filled()
  assert (filled.steps, filled.lrs, filled.best_seeds, filled.extend) == (
    defaults.steps,
    defaults.lrs,
    defaults.best_seeds,
    0,
  )


def test_filled_leaves_settings_without_a_default_field_alone():
  # Tunix's settings have no grid: only the fields they have are filled.
  config = tunix_sft.TunixSFTConfig(preset='tiny')
  assert config.filled() == config
  plain = dataclasses.make_dataclass('Plain', [], bases=(FineTuneOptions, TrainConfig), frozen=True)
  assert plain(preset='tiny').filled().steps == PRESETS['tiny'].sft.steps


def test_padded_batches_cover_every_pair_once_and_never_score_the_padding():
  rows, length = 5, 4
  tokens = np.arange(rows * (length + 1), dtype=np.int32).reshape(rows, length + 1) + 1
  pairs = docstring_pairs.PairSet(
    tokens=tokens,
    loss_mask=np.ones((rows, length), bool),
    prompt_lengths=np.ones(rows, np.int32),
    files=('a.py',) * rows,
    dropped=0,
  )
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  batches = padded_batches(pairs, batch_size=2)
  assert [x.shape for x, _ in batches] == [(2, length)] * 3
  np.testing.assert_array_equal(np.concatenate([x for x, _ in batches])[:rows], inputs)
  np.testing.assert_array_equal(np.concatenate([y for _, y in batches])[:rows], targets)
  assert (batches[-1][1][1] == -1).all() and (batches[-1][0][1] == 0).all()


def test_the_tunix_benchmark_does_not_import_the_sft_program():
  tree = ast.parse((ROOT / 'models' / 'bench' / 'tunix_sft.py').read_text())
  imported = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom):
      imported |= {f'{node.module}.{alias.name}' for alias in node.names} | {node.module}
    elif isinstance(node, ast.Import):
      imported |= {alias.name for alias in node.names}
  assert 'models.sft' not in imported
  assert not issubclass(tunix_sft.TunixSFTConfig, (sft.SFTConfig, SearchConfig))
