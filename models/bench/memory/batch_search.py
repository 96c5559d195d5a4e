"""The largest batch whose step fits a memory budget, in few compiles.

Each probe of the search is a compile (seconds to a minute for a large model), so the search
guesses where the budget is crossed from the batches already measured, and confirms the answer
from both sides.
"""

from __future__ import annotations

from collections.abc import Callable
import math

# Batches past this many sequences per device are not searched (no budget here comes near it).
MAX_BATCH = 1 << 16


def largest_fitting_batch(
  memory_at: Callable[[int], int], budget: int, known: dict[int, int]
) -> int:
  """The largest batch whose step needs at most ``budget`` bytes; 0 if batch 1 does not fit.

  A step's memory is close to affine in the batch, so each guess is the batch at which a line
  through measured points crosses the budget (see ``_affine_guess``), and a guess that fits is
  followed by the next batch, so that an exact line ends the search at once: the answer is always
  confirmed by measuring it (fits) and the next batch (does not). Bisection takes over where a
  guess does not narrow the bracket.

  Args:
    memory_at: bytes of the step at a batch (a compile); results are added to ``known``.
    budget: bytes available.
    known: measured ``{batch: bytes}``, reused and extended.

  Returns:
    The largest batch ``b <= MAX_BATCH`` with ``memory_at(b) <= budget``, assuming memory grows
    with the batch.
  """

  def measure(batch: int) -> int:
    if batch not in known:
      known[batch] = memory_at(batch)
    return known[batch]

  if measure(1) > budget:
    return 0
  while True:
    fits = [b for b, m in known.items() if m <= budget]
    too_big = [b for b, m in known.items() if m > budget]
    low = max(fits)
    high = min(too_big) if too_big else MAX_BATCH + 1
    if high - low <= 1:
      return low
    guess = _affine_guess(known, budget, low, min(too_big) if too_big else None)
    if not low < guess < high:
      guess = (low + high) // 2 if too_big else min(2 * low, MAX_BATCH)
    # Every batch strictly inside the bracket is unmeasured, so each pass narrows it.
    if measure(guess) <= budget and guess + 1 < high:
      measure(guess + 1)


def _affine_guess(known: dict[int, int], budget: int, low: int, high: int | None) -> int:
  """Where a line through measured points reaches ``budget`` (-1 if none rises).

  Inside a bracket the line joins its ends; above every measured batch it joins the smallest
  and the largest batch that fit, the widest baseline, which steps in the memory do not mislead.
  """
  first = high if high is not None else min(known)
  if first == low:
    return -1
  (b1, m1), (b2, m2) = sorted([(first, known[first]), (low, known[low])])
  if m2 <= m1:
    return -1
  return math.floor(b1 + (budget - m1) * (b2 - b1) / (m2 - m1))
