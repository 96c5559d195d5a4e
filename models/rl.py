"""RL with GRPO: the token tables' optimizers compared on a verifiable reward.

    python -m models.rl                           # the full comparison (small preset), resumable
    python -m models.rl --preset tiny --out DIR   # seconds: what CI runs

The task is ``--task``, by name from ``models.data.tasks.TASKS`` (a new reward is a new entry
there). The default, ``close-brackets-v1`` (``models.data.bracket_prompts``): a prompt is a
window of the corpus's code cut where brackets are open; a completion earns 1 if it closes all
of them, in order, within ``--max-new-tokens`` tokens. Every run starts from the pretrained base
model (``models.training.pretrained``), which is also GRPO's reference model for the KL term
(``models.training.grpo``), and trains with an AdamW body; the setups differ in what trains the
token tables (``adamw``, ``ember``, ``rowwise``). A step draws ``P`` training prompts, samples
``G`` completions of each (``--batches PxG``, small and large), and takes one GRPO update
(``models.training.rl_runs``).

Each setup runs at its own best peak learning rate for each batch shape, searched as the quality
benchmark does (a grid on ``--seeds`` that grows until it brackets the best reward, then
``--best-seeds`` there). The held-out reward is the mean reward of 4 completions of each held-out
prompt (for brackets: the share that close them), sampled at ``--temperature`` with the same keys
for every setup; Ember is compared with each other setup seed by seed, with 95% intervals.

Writes to ``--out`` (default ``models/results/rl`` for the small preset, ``out/rl/<preset>``
otherwise): ``results.json`` (strict JSON), ``results.md`` and ``reward_curves.png``
(``models.reporting.rl``); every finished run is kept in ``<out>/runs/`` (committed for the full
run), so the same command resumes a stopped comparison or rebuilds the tables from the saved
runs.

Why not Tunix's ``GRPOLearner``: its sampler and log-probability code call the model as
``model(tokens, positions, cache, attention_mask)`` and unpack ``(logits, cache)``, with
left-padded prompts and ``config.num_layers/num_kv_heads/head_dim``; our GPT (and any Flax
model a user brings) is ``model(tokens) -> logits``. A run here (``models.training.rl_runs``) is a
page: sampling with the model's own cache, the task's reward, and one jitted update through the
shared train step, in the loop every program shares (``models.training.loop.run_steps``).
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import math
from pathlib import Path
import time

import numpy as np

from models import cli
from models.cli import ConfigError, option
from models.optim import registry
from models.reporting import results as results_lib
from models.reporting import rl as rl_report
from models.reporting import stats
from models.training import checkpoints as checkpoints_lib
from models.training import rl_runs, search
from models.training.rl_runs import GRPOOptions, RLComparison, negative_reward, parse_batch

PROG = 'python -m models.rl'
DEFAULT_OUT = Path('models', 'results', 'rl')


@dataclasses.dataclass(frozen=True)
class RLConfig(GRPOOptions):
  """The comparison's settings (each run's are ``GRPOOptions``'s); ``None`` takes the preset's
  RL default."""

  setups: tuple[str, ...] = option(registry.default_setups('rl'), 'table optimizers, AdamW body')
  batches: tuple[str, ...] | None = option(
    None,
    'batch shapes PROMPTSxGROUP: prompts per step x completions per prompt (default: 2x2 '
    '2x4 8x8; tiny: 2x2)',
  )
  seeds: tuple[int, ...] = option((0,), 'prompt-order and sampling seeds of every grid point')
  best_seeds: tuple[int, ...] | None = option(
    None, "more seeds at each setup's best learning rate (default: 1 2; tiny: none)"
  )
  lrs: tuple[float, ...] | None = option(
    None, 'the starting grid of peak learning rates (default: 1e-4 3e-4 1e-3; tiny: 1e-3)'
  )
  extend: int | None = option(
    None, "times a grid may grow on each side to bracket a setup's best (default: 2; tiny: 0)"
  )
  out: str | None = option(
    None,
    'folder for results.json, results.md, reward_curves.png and runs/ (default: '
    'models/results/rl for the small preset, out/rl/<preset> otherwise)',
  )
  checkpoint_dir: str | None = option(
    None, 'Orbax checkpoints of unfinished runs (default: out/rl/checkpoints/<preset>)'
  )
  checkpoint_every: int = option(20, 'steps between checkpoints')

  def filled(self) -> RLConfig:
    """The settings with the preset's defaults where none was given."""
    config = super().filled()
    if config.out is None:
      small = self.preset == 'small'
      config = dataclasses.replace(
        config, out=str(DEFAULT_OUT if small else Path('out', 'rl', self.preset))
      )
    if config.checkpoint_dir is None:
      default = Path('out', 'rl', 'checkpoints', self.preset)
      config = dataclasses.replace(config, checkpoint_dir=str(default))
    return config


def check(config: RLConfig) -> None:
  """Raises ``ConfigError`` naming the first setting that cannot be run."""
  rl_runs.check_options(config)
  search.check_search(config.lrs, config.extend, config.seeds, config.best_seeds)
  for batch in config.batches:
    parse_batch(batch)
  if len(set(config.batches)) != len(config.batches) or not config.batches:
    raise ConfigError(f'--batches must name batch shapes once each, got {list(config.batches)}')
  if not config.setups or len(set(config.setups)) != len(config.setups):
    raise ConfigError(f'--setups must name setups once each, got {list(config.setups)}')
  every = config.checkpoint_every
  if isinstance(every, bool) or not isinstance(every, int) or every < 1:
    raise ConfigError(f'--checkpoint-every must be an integer >= 1, got {every!r}')
  for setup in config.setups:
    try:
      parsed = registry.Setup.parse(setup)
    except ValueError as error:
      raise ConfigError(f'--setups: setup {setup!r}: {error}') from None
    if parsed.body != 'adamw':
      raise ConfigError(f'--setups {setup!r}: RL compares table optimizers beside an AdamW body')


def run_name(setup: str, batch: str, lr: float, seed: int) -> str:
  """The name a run's checkpoints and saved results go by, e.g. ``ember-2x4-lr0.0003-seed0``."""
  return f'{setup}-{batch}-lr{lr:g}-seed{seed}'


def run_settings(config: RLConfig, runs: RLComparison) -> dict:
  """Everything a run's numbers depend on, checked against saved runs."""
  varying = {'setups', 'batches', 'seeds', 'best_seeds', 'lrs', 'extend', 'out', 'checkpoint_dir',
             'checkpoint_every', 'cache_dir', 'pretrained_dir'}  # fmt: skip
  settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in varying}
  return {**settings, 'base_model': runs.base_key, 'train_prompts': rl_runs.TRAIN_PROMPTS}


def run_rl(config: RLConfig, verbose: bool = True) -> dict:
  """Runs (or resumes) the comparison; returns and writes its results."""
  config = config.filled()
  check(config)
  log = print if verbose else (lambda *a, **k: None)
  started = time.perf_counter()
  shared = RLComparison.build(config, config.setups, verbose=verbose)
  settings = run_settings(config, shared)
  folder = checkpoints_lib.open_folder(config.checkpoint_dir, settings)
  runs_dir = checkpoints_lib.open_folder(Path(config.out) / 'runs', settings)
  runs = []
  for batch in config.batches:
    for name in config.setups:
      setup = registry.Setup.parse(name)

      def run_point(lr: float, seeds: Sequence[int], setup=setup, batch=batch) -> list[dict]:
        point = []
        for seed in seeds:
          checkpoints = checkpoints_lib.RunCheckpoints(
            folder, run_name(setup.name, batch, lr, seed), config.checkpoint_every, runs_dir
          )
          point.append(rl_runs.train_rl(shared, setup, batch, seed, lr, checkpoints, log))
        return point

      setup_runs, best = search.bracket_best(
        config.lrs,
        config.extend,
        lambda lr, run_point=run_point: run_point(lr, config.seeds),
        lambda runs: search.best_learning_rate(runs, 'lr', negative_reward),
      )
      runs += setup_runs
      if config.best_seeds:
        runs += run_point(best, config.best_seeds)
  base_reward = shared.held_out_reward(shared.base_params, config.final_eval_prompts, -1)
  corpus = shared.comparison.corpus
  results = {
    'task': config.task,
    'config': dataclasses.asdict(config),
    'settings': settings,
    'base_model': {'key': shared.base_key, 'held_out_reward': base_reward},
    **summarize(runs),
    'runs': runs,
    'data': {k: v for k, v in corpus.info.items() if k != 'val_file_list'},
    'environment': results_lib.environment(corpus.cache_dir),
    'total_time_s': time.perf_counter() - started,
  }
  results['tables'] = rl_report.format_tables(results)
  rl_report.write(results, Path(config.out), verbose)
  return results


def summarize(runs: Sequence[dict]) -> dict:
  """Each setup's best learning rate per batch shape, and Ember minus each other setup there.

  Returns:
    ``{"grid", "best", "paired", "targets"}``: ``grid[batch][setup][lr]`` and
    ``best[batch][setup]`` describe the final held-out reward over seeds (``best`` with
    ``"best_lr"``, ``"lr_on_grid_edge"``, the state bytes and the share of groups with equal
    rewards), ``paired[batch][setup]`` Ember minus ``setup`` seed by seed (positive: Ember
    earns more), and ``targets[batch]`` whether Ember is no worse than AdamW tables there.
  """
  grid, best, paired, targets = {}, {}, {}, {}
  for batch in dict.fromkeys(r['batch'] for r in runs):
    mine = [r for r in runs if r['batch'] == batch]
    grid[batch], best[batch], at_best = {}, {}, {}
    for setup in dict.fromkeys(r['setup'] for r in mine):
      theirs = [r for r in mine if r['setup'] == setup]
      lrs = sorted({r['lr'] for r in theirs})
      grid[batch][setup] = {
        str(lr): stats.describe([r['final_reward'] for r in theirs if r['lr'] == lr]) for lr in lrs
      }
      best_lr = search.best_learning_rate(theirs, 'lr', negative_reward)
      at_best[setup] = [r for r in theirs if r['lr'] == best_lr]
      best[batch][setup] = {
        'best_lr': best_lr,
        'lr_on_grid_edge': len(lrs) > 1 and best_lr in (lrs[0], lrs[-1]),
        'seeds': [r['seed'] for r in at_best[setup]],
        'final_reward': stats.describe([r['final_reward'] for r in at_best[setup]]),
        'zero_advantage_share': float(
          np.mean([r['mean_zero_advantage_share'] for r in at_best[setup]])
        ),
        'table_state_bytes': at_best[setup][0]['table_state_bytes'],
        'model_state_bytes': at_best[setup][0]['model_state_bytes'],
      }
    paired[batch] = {}
    if 'ember' in at_best:
      ours = {r['seed']: r['final_reward'] for r in at_best['ember']}
      for setup, theirs in at_best.items():
        if setup == 'ember':
          continue
        other = {r['seed']: r['final_reward'] for r in theirs}
        seeds = sorted(set(ours) & set(other))
        diff = stats.describe([ours[s] - other[s] for s in seeds])
        paired[batch][setup] = {
          'seeds': seeds,
          'final_reward': {**diff, 'verdict': stats.verdict(diff['ci95'], lower_is_better=False)},
        }
    if 'adamw' in paired[batch]:
      diff = paired[batch]['adamw']['final_reward']
      low = diff['ci95'][0]
      targets[batch] = {
        'no_worse_than_adamw_tables': low is not None and not math.isnan(low) and low >= 0,
        'difference': diff,
      }
  return {'grid': grid, 'best': best, 'paired': paired, 'targets': targets}


def build_parser() -> cli.Parser:
  return cli.parser_for(
    RLConfig,
    PROG,
    'GRPO from the pretrained base model on a verifiable reward (--task), under each table '
    'optimizer at its best learning rate, at small and large batches; compares them.',
  )


def main(argv: Sequence[str] | None = None) -> dict:
  args = build_parser().parse_args(argv)
  return cli.run_command(PROG, lambda: run_rl(cli.from_args(args, RLConfig)))


if __name__ == '__main__':
  main()
