"""Synthetic token batches, the same on every host, for programs that need no corpus."""

from __future__ import annotations

import numpy as np


def synthetic_batch(step: int, batch_size: int, seq_len: int, vocab_size: int, seed: int):
  """Token ids ``(batch_size, seq_len + 1)`` for ``step``: Zipf-like, the same on every host.

  Example:
    >>> synthetic_batch(0, batch_size=2, seq_len=3, vocab_size=100, seed=0).shape
    (2, 4)
  """
  rng = np.random.default_rng([seed, step])
  ranks = rng.zipf(1.2, size=(batch_size, seq_len + 1)) - 1
  return (ranks % vocab_size).astype(np.int32)
