"""The data pipeline: the stdlib corpus, its split, the tokenizer cache, batches."""

from __future__ import annotations

import random

import numpy as np
import pytest

from models.data import corpus as data_lib
from models.data import files as files_lib


def test_stdlib_split_is_code_only_deterministic_and_disjoint():
  root, files = files_lib.list_files(None)
  assert len(files) > 500  # The stdlib is there: no download needed.
  # Code only: no test suite, installed packages or the documentation's prose (pydoc_data).
  assert not any(f.startswith(('test/', 'pydoc_data/')) or 'site-packages' in f for f in files)
  train, val = files_lib.split_files(files, 0.05)
  assert not set(train) & set(val)
  assert sorted(train + val) == files
  assert 0.02 < len(val) / len(files) < 0.1
  # The split depends on the paths only, not on their order.
  shuffled = files[:]
  random.Random(0).shuffle(shuffled)
  train2, val2 = files_lib.split_files(shuffled, 0.05)
  assert set(train2) == set(train) and set(val2) == set(val)
  # And is the same again on another call (no hidden randomness).
  assert files_lib.split_files(files, 0.05) == (train, val)


def test_split_keeps_both_sides_non_empty():
  train, val = files_lib.split_files(['a.txt', 'b.txt'], 0.001)
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
