"""Every model size of the programs, by name, and the presets: a size with the training settings
that suit it.

:data:`SIZES` is the one table of GPT shapes: the presets, the scaling sweep and every program
name their models from it. A program's per-size defaults live in the size's :class:`Preset`, beside
the size, not in the program.
"""

from __future__ import annotations

import dataclasses

from models.nets.gpt import GPTConfig


@dataclasses.dataclass(frozen=True)
class FineTuningDefaults:
  """A size's supervised fine-tuning settings (``models.sft``), where the flags leave them unset.

  Fine-tuning rates sit below pretraining's; the grid grows where a best lands on its edge.
  """

  steps: int = 1000
  lrs: tuple[float, ...] = (1e-4, 2e-4, 4e-4)
  best_seeds: tuple[int, ...] = (1, 2)
  extend: int = 2


@dataclasses.dataclass(frozen=True)
class RLDefaults:
  """A size's RL settings (``models.rl``), where the flags leave them unset: steps, batches
  (``PROMPTSxSAMPLES``), the learning-rate grid and its seeds, prompt and completion lengths,
  held-out prompts along the run and at its end."""

  steps: int = 60
  batches: tuple[str, ...] = ('2x2', '2x4', '8x8')
  lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3)
  best_seeds: tuple[int, ...] = (1, 2)
  extend: int = 2
  prompt_len: int = 64
  max_new_tokens: int = 16
  eval_prompts: int = 32
  final_eval_prompts: int = 128
  eval_every: int = 15


@dataclasses.dataclass(frozen=True)
class Preset:
  """A model size together with the training settings that suit it.

  Attributes:
    model: the model's shape (``vocab_size`` is replaced by the run's).
    batch_size: sequences per step.
    seq_len: tokens per sequence.
    steps: optimizer steps of a run.
    lr: peak learning rate of every setup (warm-up, then cosine decay to a tenth of it).
    warmup_steps: linear warm-up length.
    eval_every: steps between validation points of the loss curve.
    eval_batches: validation batches of the final evaluation.
    vocab_size: default tokenizer vocabulary size.
    sft: the size's fine-tuning defaults (``models.sft``).
    rl: the size's RL defaults (``models.rl``).
  """

  model: GPTConfig
  batch_size: int
  seq_len: int
  steps: int
  lr: float
  warmup_steps: int
  eval_every: int
  eval_batches: int
  vocab_size: int = 8192
  sft: FineTuningDefaults = FineTuningDefaults()
  rl: RLDefaults = RLDefaults()


SIZES: dict[str, GPTConfig] = {
  'tiny': GPTConfig(max_len=64, d_model=64, n_layers=2, n_heads=2, d_ff=192),
  'small': GPTConfig(max_len=128, d_model=128, n_layers=4, n_heads=4, d_ff=384),
  'medium': GPTConfig(max_len=256, d_model=384, n_layers=6, n_heads=6, d_ff=1536),
  'large': GPTConfig(max_len=512, d_model=768, n_layers=12, n_heads=12, d_ff=3072),
  # The scaling sweep's size axis around ``small`` (d_model 128), and its CI sweep's two sizes.
  'd64': GPTConfig(max_len=128, d_model=64, n_layers=1, n_heads=2, d_ff=192),
  'd96': GPTConfig(max_len=128, d_model=96, n_layers=2, n_heads=3, d_ff=288),
  'd192': GPTConfig(max_len=128, d_model=192, n_layers=4, n_heads=6, d_ff=576),
  't16': GPTConfig(max_len=32, d_model=16, n_layers=1, n_heads=1, d_ff=48),
  't32': GPTConfig(max_len=32, d_model=32, n_layers=2, n_heads=2, d_ff=96),
}

PRESETS: dict[str, Preset] = {
  # Seconds on a CPU: the test suite's model.
  'tiny': Preset(
    model=SIZES['tiny'],
    batch_size=16,
    seq_len=64,
    steps=100,
    lr=1e-2,
    warmup_steps=10,
    eval_every=25,
    eval_batches=8,
    vocab_size=512,
    # CI's: one rate, one seed, a few steps.
    sft=FineTuningDefaults(steps=20, lrs=(3e-3,), best_seeds=(), extend=0),
    rl=RLDefaults(
      steps=4,
      batches=('2x2',),
      lrs=(1e-3,),
      best_seeds=(),
      extend=0,
      prompt_len=24,
      max_new_tokens=8,
      eval_prompts=8,
      final_eval_prompts=16,
      eval_every=2,
    ),
  ),
  # The main job: three setups in under ten minutes on a 2-core CPU. Learning rate: every
  # setup's best on the quality benchmark's grid is 4e-3 (README, Quality benchmark).
  'small': Preset(
    model=SIZES['small'],
    batch_size=8,
    seq_len=128,
    steps=600,
    lr=4e-3,
    warmup_steps=30,
    eval_every=100,
    eval_batches=64,
    # Fine-tuning below pretraining's 4e-3; RL at the defaults.
    sft=FineTuningDefaults(steps=300, lrs=(5e-4, 1e-3, 2e-3)),
  ),
  # Meant for a GPU/TPU.
  'medium': Preset(
    model=SIZES['medium'],
    batch_size=32,
    seq_len=256,
    steps=3000,
    lr=1e-3,
    warmup_steps=200,
    eval_every=250,
    eval_batches=128,
  ),
  'large': Preset(
    model=SIZES['large'],
    batch_size=32,
    seq_len=512,
    steps=10000,
    lr=6e-4,
    warmup_steps=500,
    eval_every=500,
    eval_batches=256,
    vocab_size=16384,
  ),
}
