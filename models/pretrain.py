"""Pretrains the base model of post-training once, with the main job's recipe, and caches it.

    python -m models.pretrain                   # the small preset: minutes on a CPU
    python -m models.pretrain --preset tiny --steps 20

``models.sft`` and ``models.rl`` start from this checkpoint and build it when it is missing; this
command builds it ahead (or says where it is). See ``models.training.pretrained``.
"""

from __future__ import annotations

from collections.abc import Sequence

from models import cli
from models.training.pretrained import PretrainConfig, Pretrained, load_or_pretrain

PROG = 'python -m models.pretrain'


def build_parser() -> cli.Parser:
  return cli.parser_for(
    PretrainConfig,
    PROG,
    "Trains the base model of post-training once (the main job's model and recipe, AdamW "
    'everywhere) and caches it; prints where it is.',
  )


def main(argv: Sequence[str] | None = None) -> Pretrained:
  args = build_parser().parse_args(argv)
  return cli.run_command(PROG, lambda: load_or_pretrain(cli.from_args(args, PretrainConfig)))


if __name__ == '__main__':
  main()
