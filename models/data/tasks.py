"""Post-training tasks: prompts with a verifiable reward, by name, for RL (``models.rl``).

A task is a :class:`PromptTask`: its name (recorded with the runs, so a new version of the
prompts or the reward is a new name), its training and held-out :class:`Prompts` (token arrays
with what the reward checks each prompt's completions against), and ``reward(completions,
expected)``, a score in [0, 1] per completion. :data:`TASKS` builds each task from the corpus by
name; a new reward is a new entry there, not a change of the program: a builder ``(corpus,
TaskSpec) -> PromptTask`` beside the data it reads, held out by the corpus's file split
(``tests/models/test_rl.py`` runs a second task through ``models.rl`` this way)::

  spec = TaskSpec(prompt_len=24, train_prompts=64, held_out_prompts=16)
  task = build_task('close-brackets-v1', corpus, spec)
  prompts = task.held_out.tokens[:4]  # the model completes these: (4, new_tokens) ids
  rewards = task.reward(completions, task.held_out.expected[:4])  # (4,) floats in [0, 1]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
from typing import Any, Protocol

import numpy as np

from models.data import bracket_prompts
from models.data.corpus import Corpus


class Prompts(Protocol):
  """Prompts of one side (training or held-out).

  Attributes:
    tokens: ``(n, prompt_len)`` int32 token ids.
    expected: per prompt, what the reward checks its completions against.
  """

  @property
  def tokens(self) -> np.ndarray: ...

  @property
  def expected(self) -> Sequence[Any]: ...


@dataclasses.dataclass(frozen=True)
class TaskPrompts:
  """The plain :class:`Prompts`, for a task that needs no prompt type of its own."""

  tokens: np.ndarray
  expected: tuple[Any, ...]


class PromptTask(Protocol):
  """What RL trains on and scores: prompts and a reward of their completions.

  Attributes:
    name: the task's name and version, such as ``"close-brackets-v1"``, as :data:`TASKS` knows
      it; recorded in the runs' settings, so saved runs of another task or version never match.
    train: the prompts training samples from.
    held_out: the prompts of the held-out reward (the curves' and the final one's).
  """

  @property
  def name(self) -> str: ...

  @property
  def train(self) -> Prompts: ...

  @property
  def held_out(self) -> Prompts: ...

  def reward(self, completions: np.ndarray, expected: Sequence[Any]) -> np.ndarray:
    """``(n,)`` float32 rewards in [0, 1] of ``(n, new_tokens)`` completion token ids.

    A completion ends at its first ``<|endoftext|>``; ``expected[i]`` is the ``expected`` entry
    of the prompt completion ``i`` continues.
    """
    ...


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """What the program asks of a task's prompts.

  Attributes:
    prompt_len: tokens per prompt.
    train_prompts: how many training prompts.
    held_out_prompts: how many held-out prompts.
    min_open: the bracket task's difficulty: brackets a prompt leaves open, at least (a task
      without such a setting ignores it).
  """

  prompt_len: int
  train_prompts: int
  held_out_prompts: int
  min_open: int = 1


TaskBuilder = Callable[[Corpus, TaskSpec], PromptTask]


def close_brackets(corpus: Corpus, spec: TaskSpec) -> bracket_prompts.BracketTask:
  """The bracket-closing task (``models.data.bracket_prompts``) on ``corpus``'s code."""

  def prompts(side: str, n: int) -> bracket_prompts.PromptSet:
    return bracket_prompts.load_prompts(
      corpus, side=side, n=n, prompt_len=spec.prompt_len, min_open=spec.min_open
    )

  return bracket_prompts.BracketTask(
    corpus.tokenizer(),
    prompts('train', spec.train_prompts),
    prompts('held_out', spec.held_out_prompts),
  )


# Every task RL can run, by its name (``PromptTask.name``).
TASKS: dict[str, TaskBuilder] = {bracket_prompts.BracketTask.name: close_brackets}


def build_task(name: str, corpus: Corpus, spec: TaskSpec) -> PromptTask:
  """The task called ``name`` (a key of :data:`TASKS`), its prompts drawn from ``corpus``.

  Raises:
    KeyError: if no task has that name.
    ValueError: if the task built goes by another name than its entry's.
  """
  task = TASKS[name](corpus, spec)
  if task.name != name:
    raise ValueError(f'the task of TASKS[{name!r}] is called {task.name!r}')
  return task
