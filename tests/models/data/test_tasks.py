"""The post-training task interface: the registry, and the bracket task's prompt/reward contract."""

from __future__ import annotations

import numpy as np
import pytest

from models.data import bracket_prompts, tasks
from models.data import corpus as data_lib

SPEC = tasks.TaskSpec(prompt_len=24, train_prompts=12, held_out_prompts=6, min_open=2)


@pytest.fixture(scope='module')
def corpus(corpus_dir, cache_dir):
  return data_lib.load_corpus(corpus_dir, vocab_size=512, cache_dir=cache_dir)


def test_the_bracket_task_keeps_the_contract(corpus):
  task = tasks.build_task('close-brackets-v1', corpus, SPEC)
  assert task.name == 'close-brackets-v1' and 'close-brackets-v1' in tasks.TASKS
  for prompts, n in ((task.train, 12), (task.held_out, 6)):
    assert prompts.tokens.shape == (n, 24) and prompts.tokens.dtype == np.int32
    assert len(prompts.expected) == n
  # The same prompts as the bracket module draws, the reward its stack check.
  same = bracket_prompts.load_prompts(corpus, side='held_out', n=6, prompt_len=24, min_open=2)
  np.testing.assert_array_equal(task.held_out.tokens, same.tokens)
  assert task.held_out.expected == same.still_open
  tokenizer = corpus.tokenizer()
  eot = tokenizer.token_to_id(data_lib.EOT)
  closers = [''.join(bracket_prompts.CLOSER[b] for b in reversed(e)) for e in same.still_open]
  rows = [tokenizer.encode(text).ids[:7] for text in closers]
  completions = np.array([row + [eot] * (8 - len(row)) for row in rows])
  rewards = task.reward(completions, task.held_out.expected)
  assert rewards.shape == (6,) and rewards.dtype == np.float32
  assert ((rewards == 0) | (rewards == 1)).all() and rewards.sum() >= 1


def test_a_builder_must_build_the_task_it_is_registered_as(corpus, monkeypatch):
  monkeypatch.setitem(tasks.TASKS, 'brackets-v2', tasks.close_brackets)
  with pytest.raises(ValueError, match="is called 'close-brackets-v1'"):
    tasks.build_task('brackets-v2', corpus, SPEC)
