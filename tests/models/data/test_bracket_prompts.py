"""The bracket-closing task: the stack check, the prompts, the rewards."""

from __future__ import annotations

import numpy as np
import pytest

from models.data import bracket_prompts as task
from models.data import corpus as data_lib


@pytest.mark.parametrize(
  'text, still_open',
  [('f(a, [b', '(['), ('x = {1: (2)}', ''), ('a)', None), ('(]', None), ('g(h(x)', '(')],
)
def test_open_brackets(text, still_open):
  assert task.open_brackets(text) == still_open


@pytest.mark.parametrize(
  'still_open, completion, closes',
  [
    ('([', '1, 2])', True),
    ('([', '1, 2)]', False),  # Wrong order.
    ('(', 'f(x))', True),  # Its own brackets first.
    ('(', 'f(x)', False),  # Not closed yet.
    ('(', ')) + 1', True),  # Closed; what follows is not read.
  ],
)
def test_closes_all(still_open, completion, closes):
  assert task.closes_all(still_open, completion) is closes


@pytest.fixture(scope='module')
def corpus(corpus_dir, cache_dir):
  return data_lib.load_corpus(corpus_dir, vocab_size=512, cache_dir=cache_dir)


def test_prompts_leave_brackets_open_and_repeat_with_the_seed(corpus):
  prompts = task.load_prompts(corpus, side='held_out', n=20, prompt_len=24, min_open=2)
  assert prompts.tokens.shape == (20, 24) and len(prompts) == 20
  tokenizer = corpus.tokenizer()
  eot = tokenizer.token_to_id(data_lib.EOT)
  for row, still_open in zip(prompts.tokens, prompts.still_open, strict=True):
    assert eot not in row
    assert task.open_brackets(tokenizer.decode(row.tolist())) == still_open
    assert len(still_open) >= 2
  again = task.load_prompts(corpus, side='held_out', n=20, prompt_len=24, min_open=2)
  np.testing.assert_array_equal(prompts.tokens, again.tokens)
  train = task.load_prompts(corpus, side='train', n=20, prompt_len=24, min_open=2)
  assert not np.array_equal(prompts.tokens, train.tokens)


def test_rewards_read_up_to_the_end_of_text(corpus):
  tokenizer = corpus.tokenizer()
  eot = tokenizer.token_to_id(data_lib.EOT)
  close = tokenizer.encode('])').ids
  rows = np.array([[*close, eot], [eot, *close]])
  np.testing.assert_array_equal(task.rewards(tokenizer, ['([', '(['], rows), [1.0, 0.0])


def test_too_many_open_brackets_say_what_to_do(corpus):
  with pytest.raises(data_lib.CorpusError, match='--min-open'):
    task.load_prompts(corpus, side='held_out', n=5, prompt_len=8, min_open=40)
