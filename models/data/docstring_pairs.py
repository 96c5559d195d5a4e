"""Instruction pairs from the corpus's own code, for supervised fine-tuning, with no download.

A pair is one Python function: the *prompt* is its signature and docstring, the *response* its
body, both as written in the source (dedented to column 0). A fine-tuned model is asked to
write the body a docstring describes, and is scored on the response tokens only.

Pipeline (deterministic):

1. **Functions.** Every ``def`` (methods and nested functions too) of every corpus file that
   ``ast`` parses, that has a docstring and at least one statement after it, on lines of its
   own.
2. **Split.** A pair is held out when its file is a validation file of the corpus
   (``Corpus.info["val_file_list"]``, the SHA-256 of the relative path): the held-out pairs
   come from files the pretrained model never saw.
3. **Tokens.** Prompt and response are encoded apart with the corpus's tokenizer, joined, and
   followed by ``<|endoftext|>`` (the model learns to stop); a pair longer than
   ``seq_len + 1`` tokens is dropped (never truncated, so every response is whole). Rows are
   padded with ``<|endoftext|>`` after the end, where the causal model never looks back from a
   scored position.
4. **Mask.** ``loss_mask[i, t]`` is True where target ``t`` (token ``t + 1``) is a response
   token or the closing ``<|endoftext|>``. ``targets`` are -1 (padding, which
   ``models.training.step`` never scores) everywhere else: the loss is on the response only,
   through the same train step and evaluation as pretraining.
5. **Cache.** Both sides go to the corpus's cache folder (``docstring_pairs-L<seq_len>.npz``,
   keyed by the corpus already), so that only the first run parses the corpus.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
import dataclasses

import numpy as np

from models.data.corpus import EOT, Corpus
from models.data.files import CorpusError, list_files, read_text, write_atomic

# Bump when anything that changes the cached pairs changes.
CACHE_VERSION = 2
SIDES = ('train', 'held_out')


@dataclasses.dataclass(frozen=True)
class PairSet:
  """One side of the split, tokenized.

  Attributes:
    tokens: ``(n, seq_len + 1)`` int32, a pair a row: prompt, response, ``<|endoftext|>``, then
      ``<|endoftext|>`` padding.
    loss_mask: ``(n, seq_len)`` bool over the next tokens ``tokens[:, 1:]``: True on the
      response.
    prompt_lengths: ``(n,)`` int32, the prompt's tokens in each row.
    files: ``(n,)`` the relative path of each pair's file.
    dropped: pairs of this side left out for being longer than ``seq_len + 1`` tokens.
  """

  tokens: np.ndarray
  loss_mask: np.ndarray
  prompt_lengths: np.ndarray
  files: tuple[str, ...]
  dropped: int

  def __len__(self) -> int:
    return self.tokens.shape[0]

  @property
  def inputs(self) -> np.ndarray:
    return self.tokens[:, :-1]

  @property
  def targets(self) -> np.ndarray:
    """The next tokens where they are scored (the response), -1 elsewhere."""
    return np.where(self.loss_mask, self.tokens[:, 1:], -1)


def function_pairs(source: str) -> list[tuple[str, str]]:
  """The ``(prompt, response)`` of every documented function of ``source``.

  The prompt runs from the ``def`` line to the docstring's last line, the response from there to
  the function's last line, each ending in a newline and dedented by the ``def``'s column.
  Source that ``ast`` cannot parse has no pairs.

  Example:

    >>> source = 'def f(x):\\n  \"\"\"Twice x.\"\"\"\\n  return 2 * x\\n'
    >>> function_pairs(source)
    [('def f(x):\\n  \"\"\"Twice x.\"\"\"\\n', '  return 2 * x\\n')]
  """
  try:
    tree = ast.parse(source)
  except (SyntaxError, ValueError):
    return []
  lines = source.splitlines(keepends=True)
  pairs = []
  for node in ast.walk(tree):
    if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
      continue
    if ast.get_docstring(node) is None or len(node.body) < 2:
      continue
    doc_end = node.body[0].end_lineno
    if node.body[1].lineno <= doc_end or node.lineno == node.body[0].lineno:
      continue  # Docstring and code share a line: no clean cut between prompt and response.
    indent = node.col_offset
    prompt = _dedent(lines[node.lineno - 1 : doc_end], indent)
    response = _dedent(lines[doc_end : node.end_lineno], indent)
    if response.strip():
      pairs.append((prompt, response))
  return pairs


def _dedent(lines: list[str], columns: int) -> str:
  out = []
  for line in lines:
    # A line inside a multi-line string may start left of the def: it is kept as it is.
    cut = columns if line[:columns].strip() == '' else 0
    text = line[cut:]
    out.append(text if text.endswith('\n') else text + '\n')
  return ''.join(out)


def load_pairs(corpus: Corpus, seq_len: int) -> tuple[PairSet, PairSet]:
  """The corpus's ``(train, held_out)`` pairs, tokenized to rows of ``seq_len + 1`` tokens,
  from the cache if they are there.

  Raises:
    CorpusError: if either side has no pair that fits (a corpus with no documented Python
      functions, or too short a ``seq_len``).
  """
  cache = corpus.cache_dir / f'docstring_pairs-v{CACHE_VERSION}-L{seq_len}.npz'
  if cache.exists():
    with np.load(cache) as saved:
      return tuple(_from_arrays(saved, side) for side in SIDES)
  pairs = _build_pairs(corpus, seq_len)
  arrays = {
    f'{side}_{k}': v for side, p in zip(SIDES, pairs, strict=True) for k, v in _to_arrays(p).items()
  }
  write_atomic(cache, lambda f: np.savez(f, **arrays))
  return pairs


def _to_arrays(pairs: PairSet) -> dict[str, np.ndarray]:
  return {
    'tokens': pairs.tokens,
    'loss_mask': pairs.loss_mask,
    'prompt_lengths': pairs.prompt_lengths,
    'files': np.asarray(pairs.files, dtype=str),
    'dropped': np.asarray(pairs.dropped),
  }


def _from_arrays(saved, side: str) -> PairSet:
  return PairSet(
    tokens=saved[f'{side}_tokens'],
    loss_mask=saved[f'{side}_loss_mask'],
    prompt_lengths=saved[f'{side}_prompt_lengths'],
    files=tuple(str(f) for f in saved[f'{side}_files']),
    dropped=int(saved[f'{side}_dropped']),
  )


def _build_pairs(corpus: Corpus, seq_len: int) -> tuple[PairSet, PairSet]:
  text = None if corpus.info['corpus'] == 'python-stdlib' else corpus.info['corpus']
  root, files = list_files(text)
  if len(files) == 1:
    raise CorpusError(
      f'--text {text}: one file has no held-out side by file; fine-tuning pairs need a folder '
      'of Python files'
    )
  held_out_files = set(corpus.info['val_file_list'])
  tokenizer = corpus.tokenizer()
  eot = tokenizer.token_to_id(EOT)
  sides: dict[bool, list] = {False: [], True: []}
  for rel in files:
    text = read_text(root / rel)
    if text:
      for prompt, response in function_pairs(text):
        sides[rel in held_out_files].append((rel, prompt, response))
  result = []
  for held_out in (False, True):
    pairs = sides[held_out]
    side = 'held-out' if held_out else 'training'
    if not pairs:
      raise CorpusError(
        f'the corpus has no documented Python function on its {side} side; fine-tuning needs '
        'Python files with docstrings (the default corpus, the standard library, has thousands)'
      )
    result.append(_tokenize(pairs, tokenizer, eot, seq_len, side))
  return result[0], result[1]


def _tokenize(pairs, tokenizer, eot: int, seq_len: int, side: str) -> PairSet:
  prompts = tokenizer.encode_batch([p for _, p, _ in pairs])
  responses = tokenizer.encode_batch([r for _, _, r in pairs])
  rows, masks, prompt_lengths, files = [], [], [], []
  for (rel, _, _), prompt, response in zip(pairs, prompts, responses, strict=True):
    ids = [*prompt.ids, *response.ids, eot]
    if len(ids) > seq_len + 1 or not prompt.ids:
      continue
    row = np.full(seq_len + 1, eot, dtype=np.int32)
    row[: len(ids)] = ids
    mask = np.zeros(seq_len, dtype=bool)
    # Target t is token t + 1: the response's tokens and the closing end-of-text.
    mask[len(prompt.ids) - 1 : len(ids) - 1] = True
    rows.append(row)
    masks.append(mask)
    prompt_lengths.append(len(prompt.ids))
    files.append(rel)
  if not rows:
    raise CorpusError(
      f'no {side} pair fits {seq_len + 1} tokens; use a longer --seq-len (the prompt and the '
      'response are never cut)'
    )
  return PairSet(
    tokens=np.stack(rows),
    loss_mask=np.stack(masks),
    prompt_lengths=np.asarray(prompt_lengths, dtype=np.int32),
    files=tuple(files),
    dropped=len(pairs) - len(rows),
  )


def pair_batches(
  pairs: PairSet, *, batch_size: int, steps: int, seed: int, start: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields ``(inputs, targets)`` batches of ``batch_size`` rows for ``steps`` steps, as
  ``corpus.train_batches`` does (targets -1 where not scored).

  Epochs of a permutation drawn from ``np.random.default_rng(seed)``: every pair once before any
  twice, the same batches for the same seed whatever the optimizer; ``start`` skips the first
  batches (to resume) without changing the rest.
  """
  if batch_size > len(pairs):
    raise CorpusError(f'--batch-size {batch_size} is more than the {len(pairs)} training pairs')
  rng = np.random.default_rng(seed)
  per_epoch = len(pairs) // batch_size
  epochs = -(-steps // per_epoch)
  order = np.concatenate(
    [rng.permutation(len(pairs))[: per_epoch * batch_size] for _ in range(epochs)]
  )
  order = order[: steps * batch_size].reshape(steps, batch_size)
  inputs, targets = pairs.inputs, pairs.targets
  for rows in order[start:]:
    yield inputs[rows], targets[rows]
