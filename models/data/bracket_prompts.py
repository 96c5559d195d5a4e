"""A verifiable task for RL from the corpus's own code: close every bracket the prompt left open.

A prompt is a window of the corpus's token stream, cut where brackets (``(``, ``[``, ``{``) are
open; a completion earns reward 1 when, within its tokens, it closes every one of them in
order (a closer that matches no open bracket first earns 0), else 0. The check is a stack over
characters; strings and comments are not parsed, the same for every optimizer.

Prompts of the training side come from the corpus's training tokens, held-out prompts from its
validation files (held out by file, as everywhere), so the held-out reward is measured on code
the model never trained on. :class:`BracketTask` is the task as RL runs it
(``models.data.tasks.PromptTask``, by the name ``close-brackets-v1``).
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
from typing import Any, ClassVar

import numpy as np

from models.data.corpus import EOT, Corpus, CorpusError

CLOSER = {'(': ')', '[': ']', '{': '}'}
OPENER = {closer: opener for opener, closer in CLOSER.items()}
# Windows drawn per prompt wanted before giving up: most windows have no bracket open.
DRAWS_PER_PROMPT = 200


def open_brackets(text: str) -> str | None:
  """The brackets ``text`` leaves open, innermost last; None if a closer matches no opener.

  Example:
    >>> open_brackets('f(x, [1, 2')
    '(['
    >>> open_brackets('a)') is None
    True
  """
  stack = []
  for char in text:
    if char in CLOSER:
      stack.append(char)
    elif char in OPENER:
      if not stack or stack[-1] != OPENER[char]:
        return None
      stack.pop()
  return ''.join(stack)


def closes_all(still_open: str, completion: str) -> bool:
  """Whether ``completion`` closes every bracket of ``still_open`` (innermost last), in order,
  before any closer that matches nothing.

  Example:
    >>> closes_all('([', '3])')
    True
    >>> closes_all('([', '3)')
    False
  """
  stack = list(still_open)
  for char in completion:
    if char in CLOSER:
      stack.append(char)
    elif char in OPENER:
      if not stack or stack[-1] != OPENER[char]:
        return False
      stack.pop()
      if not stack:
        return True
  return not stack


@dataclasses.dataclass(frozen=True)
class PromptSet:
  """Prompts of one side.

  Attributes:
    tokens: ``(n, prompt_len)`` int32 token ids.
    still_open: the brackets each prompt leaves open, innermost last.
  """

  tokens: np.ndarray
  still_open: tuple[str, ...]

  def __len__(self) -> int:
    return self.tokens.shape[0]

  @property
  def expected(self) -> tuple[str, ...]:
    """What the reward checks each prompt's completions against: ``still_open``."""
    return self.still_open


def load_prompts(
  corpus: Corpus, *, side: str, n: int, prompt_len: int, min_open: int = 1, seed: int = 0
) -> PromptSet:
  """``n`` prompts of ``prompt_len`` tokens from the ``side`` (``"train"`` or ``"held_out"``)
  tokens of ``corpus``, each leaving at least ``min_open`` brackets open at its end.

  Windows are drawn at random positions (``np.random.default_rng(seed)``), never across a
  file boundary (``<|endoftext|>``), and kept if their text leaves brackets open with no closer
  unmatched; the same arguments give the same prompts.

  Raises:
    CorpusError: if the tokens are too few, or too few windows qualify.
  """
  tokens = {'train': corpus.train_tokens, 'held_out': corpus.val_tokens}[side]
  if tokens.size <= prompt_len:
    raise CorpusError(f'the {side} tokens ({tokens.size}) are fewer than a prompt ({prompt_len})')
  tokenizer = corpus.tokenizer()
  eot = tokenizer.token_to_id(EOT)
  rng = np.random.default_rng(seed)
  rows, still_open = [], []
  for _ in range(DRAWS_PER_PROMPT):
    starts = rng.integers(0, tokens.size - prompt_len, size=4 * n)
    windows = np.stack([tokens[s : s + prompt_len] for s in starts]).astype(np.int32)
    windows = windows[~(windows == eot).any(axis=1)]
    for window, text in zip(windows, tokenizer.decode_batch(windows.tolist()), strict=True):
      brackets = open_brackets(text)
      if brackets is not None and len(brackets) >= min_open:
        rows.append(window)
        still_open.append(brackets)
        if len(rows) == n:
          return PromptSet(np.stack(rows), tuple(still_open))
  raise CorpusError(
    f'only {len(rows)} of {n} {side} windows of {prompt_len} tokens leave {min_open} '
    'bracket(s) open; use fewer prompts or a lower --min-open'
  )


def rewards(tokenizer, still_open: Sequence[str], completions: np.ndarray) -> np.ndarray:
  """``(n,)`` float32 rewards: 1 where completion ``i`` closes ``still_open[i]``, else 0.

  A completion ends at its first ``<|endoftext|>``; the rest of its tokens are not read.
  """
  eot = tokenizer.token_to_id(EOT)
  cut = []
  for row in np.asarray(completions).tolist():
    cut.append(row[: row.index(eot)] if eot in row else row)
  texts = tokenizer.decode_batch(cut)
  return np.asarray(
    [closes_all(s, text) for s, text in zip(still_open, texts, strict=True)], dtype=np.float32
  )


@dataclasses.dataclass(frozen=True)
class BracketTask:
  """The bracket-closing task as RL runs it (a ``models.data.tasks.PromptTask``).

  Attributes:
    tokenizer: the corpus's tokenizer, which decodes the completions.
    train: the training prompts.
    held_out: the held-out prompts.
  """

  # The version changes with the prompts or the reward: saved runs of another one never match.
  name: ClassVar[str] = 'close-brackets-v1'
  tokenizer: Any
  train: PromptSet
  held_out: PromptSet

  def reward(self, completions: np.ndarray, expected: Sequence[str]) -> np.ndarray:
    """1 where completion ``i`` closes the brackets ``expected[i]`` leaves open, else 0."""
    return rewards(self.tokenizer, expected, completions)
