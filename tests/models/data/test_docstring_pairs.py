"""Fine-tuning pairs: a function's signature and docstring, then its body; held out by file."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from models.data import corpus as data_lib
from models.data import docstring_pairs as pairs_lib

SOURCE = '''\
import os


class Box:
  def size(self, scale):
    """How big.

    Scaled by ``scale``.
    """
    value = len(self) * scale
    return value

  def bare(self):
    return 1

  def short(self):
    """Docstring only."""

  def inline(self):
    """Doc."""; return 2


async def fetch(url,
                retries=3):
  """Fetches ``url``."""
  return await get(url, retries)
'''


def test_pairs_cut_at_the_docstring_and_dedent_methods():
  pairs = dict(pairs_lib.function_pairs(SOURCE))
  assert pairs == {
    'def size(self, scale):\n  """How big.\n\n  Scaled by ``scale``.\n  """\n': (
      '  value = len(self) * scale\n  return value\n'
    ),
    'async def fetch(url,\n                retries=3):\n  """Fetches ``url``."""\n': (
      '  return await get(url, retries)\n'
    ),
  }


def test_source_that_does_not_parse_has_no_pairs():
  assert pairs_lib.function_pairs('def f(:\n  """x"""\n  pass\n') == []


def test_held_out_pairs_come_from_the_corpus_held_out_files(corpus_dir, cache_dir):
  corpus = data_lib.load_corpus(corpus_dir, vocab_size=512, cache_dir=cache_dir)
  train, held_out = pairs_lib.load_pairs(corpus, seq_len=128)
  assert len(train) > 30 and len(held_out) > 0
  held_out_files = set(corpus.info['val_file_list'])
  assert set(held_out.files) <= held_out_files
  assert not set(train.files) & held_out_files
  # Read back from the cache, the same arrays.
  again_train, again_held_out = pairs_lib.load_pairs(corpus, seq_len=128)
  np.testing.assert_array_equal(again_train.tokens, train.tokens)
  np.testing.assert_array_equal(again_held_out.loss_mask, held_out.loss_mask)
  assert again_train.files == train.files and again_train.dropped == train.dropped


def test_the_loss_mask_covers_the_response_and_its_end(corpus_dir, cache_dir):
  corpus = data_lib.load_corpus(corpus_dir, vocab_size=512, cache_dir=cache_dir)
  train, _ = pairs_lib.load_pairs(corpus, seq_len=128)
  tokenizer = corpus.tokenizer()
  eot = tokenizer.token_to_id(data_lib.EOT)
  source = {
    prompt: response
    for rel in set(train.files)
    for prompt, response in pairs_lib.function_pairs((corpus_dir / rel).read_text())
  }
  for i in range(0, len(train), max(1, len(train) // 20)):
    prompt_ids = train.tokens[i, : train.prompt_lengths[i]].tolist()
    scored = train.targets[i][train.loss_mask[i]].tolist()
    assert (train.targets[i][~train.loss_mask[i]] == -1).all()
    assert scored[-1] == eot and eot not in scored[:-1]
    prompt = tokenizer.decode(prompt_ids)
    assert tokenizer.decode(scored[:-1]) == source[prompt]
    # Nothing of the prompt is scored, and everything after the end is padding.
    assert train.loss_mask[i, : train.prompt_lengths[i] - 1].sum() == 0
    end = train.prompt_lengths[i] + len(scored)
    assert (train.tokens[i, end:] == eot).all()


def test_batches_are_epochs_of_the_seed(corpus_dir, cache_dir):
  corpus = data_lib.load_corpus(corpus_dir, vocab_size=512, cache_dir=cache_dir)
  train, _ = pairs_lib.load_pairs(corpus, seq_len=128)
  batch = 4
  epoch = len(train) // batch
  steps = epoch + 3
  first = list(pairs_lib.pair_batches(train, batch_size=batch, steps=steps, seed=0))
  again = list(pairs_lib.pair_batches(train, batch_size=batch, steps=steps, seed=0))
  other = next(pairs_lib.pair_batches(train, batch_size=batch, steps=steps, seed=1))
  assert len(first) == steps
  np.testing.assert_array_equal(first[5][0], again[5][0])
  assert not np.array_equal(first[0][0], other[0])
  # The first epoch draws no pair twice: no row comes more often than the pairs hold it.
  held = collections.Counter(row.tobytes() for row in train.inputs)
  drawn = collections.Counter(row.tobytes() for inputs, _ in first[:epoch] for row in inputs)
  assert all(count <= held[row] for row, count in drawn.items())
  assert sum(drawn.values()) == epoch * batch
  resumed = list(pairs_lib.pair_batches(train, batch_size=batch, steps=steps, seed=0, start=7))
  np.testing.assert_array_equal(resumed[0][1], first[7][1])


def test_too_short_a_sequence_says_what_to_do(corpus_dir, cache_dir):
  corpus = data_lib.load_corpus(corpus_dir, vocab_size=512, cache_dir=cache_dir)
  with pytest.raises(data_lib.CorpusError, match='use a longer --seq-len'):
    pairs_lib.load_pairs(corpus, seq_len=4)
