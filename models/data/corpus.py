"""Real text with no download: corpus, byte-level BPE tokenizer, train/val split, batches.

The default corpus is the Python standard library's own code: the ``.py`` files of the running
interpreter (about 13 MB on CPython 3.11), without its test suite, installed packages and
``pydoc_data`` (a generated dump of the Python documentation's prose, which would otherwise be more
than half of the validation tokens). It is present on every machine (Colab included), so the main
job needs no download. ``text=PATH`` (a file, or a folder of text files) trains on any other
corpus instead.

Pipeline (all deterministic):

1. **Files.** The corpus files, sorted by their path relative to the corpus root.
2. **Split by file path.** A file goes to validation when the SHA-256 of its relative path,
   read as a number in [0, 1), is below ``val_fraction``. The split depends on the path only, not on
   the machine, the file order or the random seed, and a file is never in both sides. A corpus of a
   single file is split by position instead (its last ``val_fraction`` of characters).
3. **Tokenizer.** A byte-level BPE (GPT-2 style, ``tokenizers`` library) trained locally on the
   training files only (the first ``tokenizer_train_chars`` characters of them, in path order, so a
   huge ``--text`` corpus does not make training slow; the whole stdlib train split fits under the
   default cap). Documents are joined with the ``<|endoftext|>`` token.
4. **Cache.** Tokenizer and token arrays go to ``default_cache_dir()``
   (``~/.cache/ember_optax/corpus/`` unless ``$EMBER_OPTAX_CACHE_DIR`` moves it) under a key that
   hashes the corpus (root, relative paths, sizes, modification times) and every setting above.
   The second run loads them at once.
5. **Batches.** Windows of ``seq_len + 1`` tokens of the training stream, one at a random position
   in each of ``steps * batch_size`` equal strata of the stream, dealt to the steps in a random
   order, all drawn from a NumPy generator seeded by ``seed``: the same seed gives the same batches,
   whichever optimizer runs.
   Validation uses fixed windows spread evenly over the validation stream.
"""

from __future__ import annotations

from collections.abc import Iterator
import dataclasses
import hashlib
import json
import os
from pathlib import Path
import time

import numpy as np

from models.data.files import CorpusError, list_files, read_text, split_files, write_atomic

EOT = '<|endoftext|>'
# Bump when anything that changes the cached artifacts changes (tokenizer recipe, file format).
CACHE_VERSION = 1
DEFAULT_VOCAB_SIZE = 8192
DEFAULT_VAL_FRACTION = 0.05
DEFAULT_TOKENIZER_TRAIN_CHARS = 32_000_000

# 256 byte tokens and <|endoftext|>.
MIN_VOCAB_SIZE = 257


@dataclasses.dataclass(frozen=True)
class Corpus:
  """A tokenized corpus, ready for batching.

  Attributes:
    train_tokens: 1-D int array, the training files' tokens joined by ``<|endoftext|>``.
    val_tokens: 1-D int array, the same for the validation files.
    vocab_size: size of the tokenizer's vocabulary (ids are in ``[0, vocab_size)``).
    train_counts: ``(vocab_size,)`` int64, how often each id occurs in ``train_tokens``.
    tokenizer_path: where the trained ``tokenizer.json`` lives.
    cache_dir: the cache folder of this corpus and settings.
    cache_hit: True when tokenizer and arrays were loaded from the cache, not built.
    info: corpus description (root, file counts, characters, tokens, split rule).
  """

  train_tokens: np.ndarray
  val_tokens: np.ndarray
  vocab_size: int
  train_counts: np.ndarray
  tokenizer_path: Path
  cache_dir: Path
  cache_hit: bool
  info: dict

  def tokenizer(self):
    """Loads the trained ``tokenizers.Tokenizer`` (for decoding samples, say)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(self.tokenizer_path))

  def log_unigram(self) -> np.ndarray:
    """Float32 ``(vocab_size,)``: log of each id's training frequency, add-one smoothed.

    The untrained model's best guess: logits equal to it make the predicted distribution the
    training set's unigram distribution.
    """
    counts = self.train_counts.astype(np.float64) + 1.0
    return np.log(counts / counts.sum()).astype(np.float32)

  def rare_token_mask(self) -> np.ndarray:
    """Boolean ``(vocab_size,)``: True for the less frequent half of the vocabulary.

    Ids are ranked by training count (ties broken by id, so the set is deterministic); the
    ``vocab_size // 2`` least frequent ids are rare. Validation targets with a rare id are the
    ones the rare-token loss is averaged over.
    """
    order = np.lexsort((np.arange(self.vocab_size), self.train_counts))
    mask = np.zeros(self.vocab_size, dtype=bool)
    mask[order[: self.vocab_size // 2]] = True
    return mask


def default_cache_dir() -> Path:
  """``$EMBER_OPTAX_CACHE_DIR/corpus``, else ``${XDG_CACHE_HOME:-~/.cache}/ember_optax/corpus``."""
  root = os.environ.get('EMBER_OPTAX_CACHE_DIR')
  if not root:
    root = os.path.join(os.environ.get('XDG_CACHE_HOME') or '~/.cache', 'ember_optax')
  return Path(root).expanduser() / 'corpus'


def _corpus_key(root: Path, files: list[str], settings: dict) -> str:
  h = hashlib.sha256()
  h.update(json.dumps({'root': str(root), 'version': CACHE_VERSION, **settings}).encode())
  for rel in files:
    st = (root / rel).stat()
    h.update(f'{rel}\0{st.st_size}\0{st.st_mtime_ns}\n'.encode())
  return h.hexdigest()[:16]


def _train_tokenizer(texts: list[str], vocab_size: int, max_chars: int, out: Path) -> None:
  """Trains a GPT-2 style byte-level BPE on ``texts`` (capped at ``max_chars``) to ``out``."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  tokenizer = Tokenizer(models.BPE())
  # Byte-level: every byte is in the base alphabet, so any text encodes with no unknown token.
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size,
    special_tokens=[EOT],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  subset, used = [], 0
  for text in texts:
    if used >= max_chars:
      break
    subset.append(text[: max_chars - used])
    used += len(subset[-1])
  tokenizer.train_from_iterator(subset, trainer)
  tokenizer.save(str(out))


def _encode(tokenizer, texts: list[str], dtype) -> np.ndarray:
  """Encodes documents and joins them, each followed by the end-of-text token."""
  eot = tokenizer.token_to_id(EOT)
  pieces = []
  for enc in tokenizer.encode_batch(texts):
    pieces.append(np.asarray(enc.ids, dtype=dtype))
    pieces.append(np.asarray([eot], dtype=dtype))
  if not pieces:
    return np.zeros((0,), dtype=dtype)
  return np.concatenate(pieces)


def load_corpus(
  text: str | os.PathLike | None = None,
  *,
  vocab_size: int = DEFAULT_VOCAB_SIZE,
  val_fraction: float = DEFAULT_VAL_FRACTION,
  tokenizer_train_chars: int = DEFAULT_TOKENIZER_TRAIN_CHARS,
  cache_dir: str | os.PathLike | None = None,
  verbose: bool = False,
) -> Corpus:
  """Builds (or loads from the cache) the tokenized train/val corpus.

  Args:
    text: None for the default stdlib corpus, else a text file or a folder of text files.
    vocab_size: BPE vocabulary size, the special ``<|endoftext|>`` token included. A small corpus
      may end with fewer merges than asked; ``Corpus.vocab_size`` is always ``vocab_size`` so
      model shapes do not depend on the corpus (unused ids are never targets).
    val_fraction: fraction of files (by path hash) held out for validation.
    tokenizer_train_chars: the BPE is trained on at most this many characters of training text.
    cache_dir: cache root; default ``default_cache_dir()``.
    verbose: print what is being built and how long it took.
  """
  if vocab_size < MIN_VOCAB_SIZE:
    raise CorpusError(
      f'--vocab-size must be at least {MIN_VOCAB_SIZE} (256 bytes + <|endoftext|>), got '
      f'{vocab_size}'
    )
  root, files = list_files(text)
  settings = {
    'vocab_size': vocab_size,
    'val_fraction': val_fraction,
    'tokenizer_train_chars': tokenizer_train_chars,
    'single_file': len(files) == 1,
  }
  key = _corpus_key(root, files, settings)
  base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
  cdir = base / f'{"stdlib" if text is None else "text"}-v{vocab_size}-{key}'
  tok_path, meta_path = cdir / 'tokenizer.json', cdir / 'meta.json'
  train_path, val_path = cdir / 'train.npy', cdir / 'val.npy'
  dtype = np.uint16 if vocab_size <= 2**16 else np.int32

  cache_hit = all(p.exists() for p in (tok_path, meta_path, train_path, val_path))
  if cache_hit:
    info = json.loads(meta_path.read_text())
    train_tokens = np.load(train_path)
    val_tokens = np.load(val_path)
  else:
    start = time.perf_counter()
    cdir.mkdir(parents=True, exist_ok=True)
    if len(files) == 1:
      # One file: split by position (the tail is validation), the only split a single
      # document allows.
      whole = read_text(root / files[0]) or ''
      cut = int(len(whole) * (1.0 - val_fraction))
      train_texts, val_texts = [whole[:cut]], [whole[cut:]]
      train_files, val_files = files, files
      split_rule = f'single file: last {val_fraction:.0%} of characters is validation'
    else:
      train_files, val_files = split_files(files, val_fraction)
      train_texts = [t for t in (read_text(root / f) for f in train_files) if t]
      val_texts = [t for t in (read_text(root / f) for f in val_files) if t]
      split_rule = f'by file: sha256(relative path) < {val_fraction} is validation'
    if not train_texts or not val_texts:
      raise CorpusError(
        f'--text {text}: no readable text on the '
        f'{"training" if not train_texts else "validation"} side of the split (files with NUL '
        'bytes are skipped as binary); give more text files'
      )
    if verbose:
      print(
        f'[data] training a {vocab_size}-token byte-level BPE on '
        f'{sum(map(len, train_texts)) / 1e6:.1f}M characters ...',
        flush=True,
      )
    tmp_tok = cdir / f'tokenizer.json.{os.getpid()}.tmp'
    _train_tokenizer(train_texts, vocab_size, tokenizer_train_chars, tmp_tok)
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tmp_tok))
    train_tokens = _encode(tokenizer, train_texts, dtype)
    val_tokens = _encode(tokenizer, val_texts, dtype)
    info = {
      'corpus': 'python-stdlib' if text is None else str(Path(text).expanduser()),
      'root': str(root),
      'files': len(files),
      'train_files': len(train_files),
      'val_files': len(val_files),
      'train_chars': sum(map(len, train_texts)),
      'val_chars': sum(map(len, val_texts)),
      'train_tokens': int(train_tokens.size),
      'val_tokens': int(val_tokens.size),
      'vocab_size': vocab_size,
      'tokenizer_vocab_used': tokenizer.get_vocab_size(),
      'split': split_rule,
      'tokenizer_train_chars': min(tokenizer_train_chars, sum(map(len, train_texts))),
      'val_file_list': val_files,
      'build_seconds': round(time.perf_counter() - start, 2),
    }
    # Every file is written under a temporary name and renamed into place, the tokenizer last,
    # so that neither an interrupted build nor two processes building at once leave a cache
    # that looks complete but is not.
    write_atomic(train_path, lambda f: np.save(f, train_tokens))
    write_atomic(val_path, lambda f: np.save(f, val_tokens))
    write_atomic(meta_path, lambda f: f.write(json.dumps(info, indent=1).encode()))
    tmp_tok.replace(tok_path)
    if verbose:
      print(
        f'[data] {info["train_tokens"]:,} train / {info["val_tokens"]:,} val tokens, '
        f'built in {info["build_seconds"]}s, cached in {cdir}',
        flush=True,
      )
  counts = np.bincount(train_tokens, minlength=vocab_size).astype(np.int64)
  return Corpus(
    train_tokens=train_tokens,
    val_tokens=val_tokens,
    vocab_size=vocab_size,
    train_counts=counts[:vocab_size],
    tokenizer_path=tok_path,
    cache_dir=cdir,
    cache_hit=cache_hit,
    info=info,
  )


def check_fits(corpus: Corpus, seq_len: int) -> None:
  """Raises ``CorpusError`` unless both sides of ``corpus`` hold at least one window."""
  for side, tokens, needed in (
    ('training', corpus.train_tokens, seq_len + 2),
    ('validation', corpus.val_tokens, seq_len + 1),
  ):
    if tokens.size < needed:
      raise CorpusError(
        f"the corpus's {side} side has {tokens.size} tokens, too few for one sequence of "
        f'--seq-len {seq_len} ({needed} needed); give more text or a shorter --seq-len'
      )


def train_batches(
  tokens: np.ndarray, *, batch_size: int, seq_len: int, steps: int, seed: int, start: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields batches ``(inputs, targets)`` of shape ``(batch_size, seq_len)``, int32.

  The run's ``steps * batch_size`` windows cover the training stream evenly: the stream is cut
  into that many equal strata, each holds one window at a uniformly random position, and the
  windows are dealt to the steps in a random order. A short run thus sees every part of the
  corpus in proportion, whatever the seed (independent uniform windows would let the share of
  each kind of file vary from seed to seed, and the validation loss with it). Everything is drawn
  up front from ``np.random.default_rng(seed)``, so the batches depend on ``seed`` (and on
  ``steps``) only, never on the optimizer being trained; ``start`` skips the first batches (to
  resume a run) without changing the rest.
  """
  if tokens.size < seq_len + 2:
    raise CorpusError(
      f'training stream has {tokens.size} tokens, fewer than seq_len + 2 = '
      f'{seq_len + 2}; use a bigger corpus or a shorter seq_len'
    )
  rng = np.random.default_rng(seed)
  windows = steps * batch_size
  positions = tokens.size - seq_len - 1  # Window starts 0 .. positions - 1.
  edges = np.linspace(0, positions, windows + 1)
  starts = np.floor(edges[:-1] + rng.random(windows) * np.diff(edges)).astype(np.int64)
  starts = rng.permutation(np.minimum(starts, positions - 1)).reshape(steps, batch_size)
  offsets = np.arange(seq_len + 1)
  for step_starts in starts[start:]:
    window = tokens[step_starts[:, None] + offsets].astype(np.int32)
    yield window[:, :-1], window[:, 1:]


def val_batches(
  tokens: np.ndarray, *, batch_size: int, seq_len: int, num_batches: int
) -> list[tuple[np.ndarray, np.ndarray]]:
  """Fixed validation batches: ``num_batches * batch_size`` windows spread evenly over ``tokens``.

  Evenly spaced starts cover the whole validation stream (many files, not just the first one).
  When the stream is short, windows overlap, and fewer batches are returned if it is shorter than
  one window.
  """
  if tokens.size < seq_len + 1:
    raise CorpusError(
      f'validation stream has {tokens.size} tokens, fewer than seq_len + 1 = '
      f'{seq_len + 1}; use a bigger corpus, a larger val_fraction or a '
      f'shorter seq_len'
    )
  n = num_batches * batch_size
  starts = np.linspace(0, tokens.size - seq_len - 1, n).round().astype(np.int64)
  offsets = np.arange(seq_len + 1)
  window = tokens[starts[:, None] + offsets].astype(np.int32)
  window = window.reshape(num_batches, batch_size, seq_len + 1)
  return [(w[:, :-1], w[:, 1:]) for w in window]
