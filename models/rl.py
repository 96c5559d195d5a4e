"""RL with GRPO: the token tables' optimizers compared on a verifiable reward.

    python -m models.rl                           # the full comparison (small preset), resumable
    python -m models.rl --preset tiny --out DIR   # seconds: what CI runs

The task (``models.data.bracket_prompts``): a prompt is a window of the corpus's code cut where
brackets are open; a completion earns 1 if it closes all of them, in order, within
``--max-new-tokens`` tokens. Every run starts from the pretrained base model
(``models.training.pretrained``), which is also GRPO's reference model for the KL term
(``models.training.grpo``), and trains with an AdamW body; the setups differ in what trains the
token tables (``adamw``, ``ember``, ``rowwise``). A step draws ``P`` training prompts, samples
``G`` completions of each (``--batches PxG``, small and large), and takes one GRPO update.

Each setup runs at its own best peak learning rate for each batch shape, searched as the quality
benchmark does (a grid on ``--seeds`` that grows until it brackets the best reward, then
``--best-seeds`` there). The held-out reward is the share of held-out prompts' completions that
close their brackets, sampled at temperature 1 with the same keys for every setup; Ember is
compared with each other setup seed by seed, with 95% intervals.

Writes to ``--out`` (default ``models/results/rl`` for the small preset, ``out/rl/<preset>``
otherwise): ``results.json`` (strict JSON), ``results.md`` and ``reward_curves.png``; every
finished run is kept in ``<out>/runs/`` (committed for the full run), so the same command
resumes a stopped comparison or rebuilds the tables from the saved runs.

Why not Tunix's ``GRPOLearner``: its sampler and log-probability code call the model as
``model(tokens, positions, cache, attention_mask)`` and unpack ``(logits, cache)``, with
left-padded prompts and ``config.num_layers/num_kv_heads/head_dim``; our GPT (and any Flax
model a user brings) is ``model(tokens) -> logits``. The loop here is a page: sampling with the
model's own cache, the reward, and one jitted update through the shared train step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import functools
import math
from pathlib import Path
import time

from flax import nnx
import jax
import numpy as np

from ember_optax.diagnostics import tree_bytes
from models import cli
from models.cli import ConfigError, option
from models.data import bracket_prompts
from models.data.corpus import EOT
from models.nets import sampling
from models.nets.gpt import table_labels
from models.optim import registry
from models.reporting import results as results_lib
from models.reporting import stats, tables
from models.training import checkpoints as checkpoints_lib
from models.training import grpo, search
from models.training import step as step_lib
from models.training.config import TrainConfig, corpus_option, resolve
from models.training.loop import Comparison, params_digest
from models.training.presets import PRESETS, RLDefaults
from models.training.pretrained import PretrainConfig, load_or_pretrain

PROG = 'python -m models.rl'
TASK = 'close-brackets-v1'
DEFAULT_OUT = Path('models', 'results', 'rl')
# Prompts of the training pool (drawn once), and the held-out prompts of the final evaluation.
TRAIN_PROMPTS = 4096
# Samples per call of the evaluation's sampler: one compiled shape for every evaluation.
EVAL_CHUNK = 128


@dataclasses.dataclass(frozen=True)
class RLConfig:
  """The comparison's settings; ``None`` takes the preset's RL default."""

  preset: str = option(
    'small', 'the base model (models.pretrain --preset) and its RL defaults', choices=tuple(PRESETS)
  )
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
  steps: int | None = option(None, 'GRPO steps per run (default: 60; tiny: 4)')
  warmup_steps: int = option(10, 'linear warm-up steps of the learning rate (at most steps - 1)')
  prompt_len: int | None = option(None, 'tokens per prompt (default: 64; tiny: 24)')
  max_new_tokens: int | None = option(None, 'tokens per completion (default: 16; tiny: 8)')
  min_open: int = option(
    2,
    'brackets a prompt leaves open, at least (2: the base model closes about 15%% of them, so '
    'that learning shows)',
  )
  temperature: float = option(1.0, 'sampling temperature, training and evaluation alike')
  beta: float = option(0.04, "the KL term's weight (GRPO's, and Tunix's, default)")
  epsilon: float = option(0.2, "the policy ratio's clipping range")
  eval_prompts: int | None = option(
    None, 'held-out prompts of each curve point, 4 completions each (default: 32; tiny: 8)'
  )
  final_eval_prompts: int | None = option(
    None, 'held-out prompts of the final evaluation, 4 completions each (default: 128; tiny: 16)'
  )
  eval_every: int | None = option(None, 'steps between curve points (default: 15; tiny: 2)')
  b2: float = option(0.999, 'second-moment decay of AdamW and Ember')
  clip_norm: float = option(1.0, 'clip the gradient to this global norm; 0 turns clipping off')
  pretrain_seed: int = option(0, "the base model's seed (models.pretrain --seed)")
  pretrained_dir: str | None = option(
    None, 'cache of pretrained checkpoints (default: $EMBER_OPTAX_CACHE_DIR/pretrained)'
  )
  text: str | None = corpus_option('text')
  cache_dir: str | None = corpus_option('cache_dir')
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
    defaults = PRESETS[self.preset].rl if self.preset in PRESETS else PRESETS['small'].rl
    values = {
      field.name: getattr(defaults, field.name)
      for field in dataclasses.fields(RLDefaults)
      if getattr(self, field.name) is None
    }
    if self.out is None:
      small = self.preset == 'small'
      values['out'] = str(DEFAULT_OUT if small else Path('out', 'rl', self.preset))
    if self.checkpoint_dir is None:
      values['checkpoint_dir'] = str(Path('out', 'rl', 'checkpoints', self.preset))
    return dataclasses.replace(self, **values)


def parse_batch(text: str) -> tuple[int, int]:
  """``"8x4"`` -> ``(8, 4)``: prompts per step and completions per prompt."""
  try:
    prompts, group = (int(part) for part in text.lower().split('x'))
  except ValueError:
    prompts = group = 0
  if prompts < 1 or group < 2:
    raise ConfigError(
      f'--batches {text!r}: expected PROMPTSxGROUP with PROMPTS >= 1 and GROUP >= 2 (a group '
      'of one has no relative advantage), such as 8x4'
    )
  return prompts, group


def check(config: RLConfig) -> None:
  """Raises ``ConfigError`` naming the first setting that cannot be run."""
  if config.preset not in PRESETS:
    raise ConfigError(f'--preset: unknown preset {config.preset!r}; choose from {list(PRESETS)}')
  search.check_search(config.lrs, config.extend, config.seeds, config.best_seeds)
  for batch in config.batches:
    parse_batch(batch)
  if len(set(config.batches)) != len(config.batches) or not config.batches:
    raise ConfigError(f'--batches must name batch shapes once each, got {list(config.batches)}')
  if not config.setups or len(set(config.setups)) != len(config.setups):
    raise ConfigError(f'--setups must name setups once each, got {list(config.setups)}')
  for name in ('steps', 'prompt_len', 'max_new_tokens', 'min_open', 'eval_prompts',
               'final_eval_prompts', 'eval_every', 'checkpoint_every'):  # fmt: skip
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ConfigError(f'{cli.flag(name)} must be an integer >= 1, got {value!r}')
  if config.max_new_tokens < 2:
    raise ConfigError(f'--max-new-tokens must be >= 2, got {config.max_new_tokens}')
  for name in ('temperature', 'epsilon'):
    value = getattr(config, name)
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
      raise ConfigError(f'{cli.flag(name)} must be a finite number > 0, got {value!r}')
  if not (math.isfinite(config.beta) and config.beta >= 0):
    raise ConfigError(f'--beta must be a finite number >= 0, got {config.beta!r}')
  for setup in config.setups:
    try:
      parsed = registry.Setup.parse(setup)
    except ValueError as error:
      raise ConfigError(f'--setups: setup {setup!r}: {error}') from None
    if parsed.body != 'adamw':
      raise ConfigError(f'--setups {setup!r}: RL compares table optimizers beside an AdamW body')
  max_len = PRESETS[config.preset].model.max_len
  if config.prompt_len + config.max_new_tokens > max_len:
    raise ConfigError(
      f'--prompt-len {config.prompt_len} + --max-new-tokens {config.max_new_tokens} exceeds the '
      f"{config.preset} model's {max_len} positions"
    )


@dataclasses.dataclass(frozen=True)
class Task:
  """What every run shares: the base model, the prompts, the compiled sampler."""

  config: RLConfig
  comparison: Comparison  # Its plan builds each setup's optimizer and schedule.
  graphdef: nnx.GraphDef
  base_params: nnx.State
  base_key: str
  train_prompts: bracket_prompts.PromptSet
  eval_prompts: bracket_prompts.PromptSet
  tokenizer: object
  eot: int
  sample: Callable
  logprobs: Callable

  def rewards(self, still_open: Sequence[str], completions) -> np.ndarray:
    return bracket_prompts.rewards(self.tokenizer, still_open, np.asarray(completions))

  def held_out_reward(self, params, prompts: int, key_seed: int) -> float:
    """Mean reward of 4 completions of each of the first ``prompts`` held-out prompts.

    The sampling keys depend on ``key_seed`` alone, so every setup is scored on the same draws.
    """
    tokens = np.repeat(self.eval_prompts.tokens[:prompts], 4, axis=0)
    still_open = [s for s in self.eval_prompts.still_open[:prompts] for _ in range(4)]
    rewards = []
    for i, start in enumerate(range(0, len(tokens), EVAL_CHUNK)):
      chunk = tokens[start : start + EVAL_CHUNK]
      missing = EVAL_CHUNK - len(chunk)
      padded = np.concatenate([chunk, np.repeat(chunk[:1], missing, axis=0)])
      key = jax.random.fold_in(jax.random.key(key_seed), i)
      completions = np.asarray(self.sample(params, padded, key))[: len(chunk)]
      rewards.append(self.rewards(still_open[start : start + len(chunk)], completions))
    return float(np.concatenate(rewards).mean())


def build_task(config: RLConfig, verbose: bool = True) -> Task:
  train_config = TrainConfig(
    preset=config.preset,
    setups=tuple(config.setups),
    steps=config.steps,
    warmup_steps=config.warmup_steps,
    b2=config.b2,
    clip_norm=config.clip_norm,
    text=config.text,
    cache_dir=config.cache_dir,
    progress=False,
  )
  comparison = Comparison.build(resolve(train_config), verbose=verbose)
  pretrained = load_or_pretrain(
    PretrainConfig(
      preset=config.preset,
      seed=config.pretrain_seed,
      text=config.text,
      cache_dir=config.cache_dir,
      pretrained_dir=config.pretrained_dir,
    ),
    corpus=comparison.corpus,
    verbose=verbose,
  )
  comparison = dataclasses.replace(comparison, start_params=pretrained.params)
  corpus = comparison.corpus
  prompt_args = {'prompt_len': config.prompt_len, 'min_open': config.min_open}
  train_prompts = bracket_prompts.load_prompts(corpus, side='train', n=TRAIN_PROMPTS, **prompt_args)
  eval_prompts = bracket_prompts.load_prompts(
    corpus, side='held_out', n=max(config.final_eval_prompts, config.eval_prompts), **prompt_args
  )
  graphdef = nnx.graphdef(comparison.init_model(0))
  tokenizer = corpus.tokenizer()

  @jax.jit
  def logprobs(params, prompts, completions):
    return grpo.completion_logprobs(nnx.merge(graphdef, params), prompts, completions)

  return Task(
    config=config,
    comparison=comparison,
    graphdef=graphdef,
    base_params=pretrained.params,
    base_key=pretrained.path.name,
    train_prompts=train_prompts,
    eval_prompts=eval_prompts,
    tokenizer=tokenizer,
    eot=tokenizer.token_to_id(EOT),
    sample=sampling.sampler(graphdef, config.max_new_tokens, config.temperature),
    logprobs=logprobs,
  )


def train_rl(
  task: Task,
  setup: registry.Setup,
  batch: str,
  seed: int,
  lr: float,
  checkpoints: checkpoints_lib.RunCheckpoints | None = None,
  log: Callable[[str], None] = print,
) -> dict:
  """One GRPO run of ``setup`` at peak rate ``lr``; returns its rewards and curves."""
  name = f'{setup.name} {batch} seed {seed}'
  if checkpoints is not None and (result := checkpoints.finished_result()) is not None:
    log(f'[rl] {name} lr {lr:g}: finished earlier, read from {checkpoints.result_path}')
    return result
  config = task.config
  n_prompts, group = parse_batch(batch)
  params = task.base_params
  tx = task.comparison.optimizer(setup, (lr, lr))
  opt_state = tx.init(params)
  loss = functools.partial(grpo.grpo_loss, old_logps=None, epsilon=config.epsilon, beta=config.beta)
  update = jax.jit(
    step_lib.train_step(
      task.graphdef,
      tx,
      lambda model, prompts, completions, mask, advantages, ref_logps: loss(
        model, prompts, completions, mask, advantages, ref_logps=ref_logps
      ),
    )
  )
  state = {'params': params, 'opt_state': opt_state}
  progress = {
    'step': 0,
    'reward_curve': [[0, task.held_out_reward(params, config.eval_prompts, 0)]],
    'train_reward_curve': [],
    'zero_advantage_share': [],
    'elapsed_s': 0.0,
    'diverged_at_step': None,
  }
  if checkpoints is not None and (restored := checkpoints.restore(state)) is not None:
    state, progress = restored
    log(f'[rl] {name} lr {lr:g}: resumed from step {progress["step"]}')
  params, opt_state = state['params'], state['opt_state']
  started, elapsed_before = time.perf_counter(), progress['elapsed_s']
  # The prompt order and the sampling keys depend on the seed alone: the same for every setup.
  order = np.random.default_rng(seed).integers(
    0, len(task.train_prompts), (config.steps, n_prompts)
  )
  for step in range(progress['step'] + 1, config.steps + 1):
    rows = np.repeat(order[step - 1], group)
    prompts = task.train_prompts.tokens[rows]
    key = jax.random.fold_in(jax.random.key(seed), step)
    completions = task.sample(params, prompts, key)
    rewards = task.rewards([task.train_prompts.still_open[i] for i in rows], completions)
    grouped = rewards.reshape(n_prompts, group)
    advantages = grpo.group_advantages(grouped)
    mask = grpo.completion_mask(completions, task.eot)
    ref_logps = task.logprobs(task.base_params, prompts, completions)
    params, opt_state, value = update(
      params, opt_state, prompts, completions, mask, advantages, ref_logps
    )
    progress['step'] = step
    if not math.isfinite(float(value)):
      progress['diverged_at_step'] = step
      log(f'[rl] {name} lr {lr:g}: loss is {float(value)} at step {step}; stopping this run')
      break
    progress['train_reward_curve'].append([step, float(rewards.mean())])
    progress['zero_advantage_share'].append(float((grouped.std(axis=1) == 0).mean()))
    if step % config.eval_every == 0 and step < config.steps:
      progress['reward_curve'].append(
        [step, task.held_out_reward(params, config.eval_prompts, step)]
      )
    if checkpoints is not None and step < config.steps:
      progress['elapsed_s'] = elapsed_before + time.perf_counter() - started
      checkpoints.save(step, {'params': params, 'opt_state': opt_state}, progress)
  diverged = progress['diverged_at_step'] is not None
  final = float('nan') if diverged else task.held_out_reward(params, config.final_eval_prompts, -1)
  if not diverged:
    progress['reward_curve'].append(
      [config.steps, task.held_out_reward(params, config.eval_prompts, config.steps)]
    )
  labels = table_labels(params, task.comparison.plan.model)
  result = {
    'setup': setup.name,
    'batch': batch,
    'seed': seed,
    'lr': lr,
    'final_reward': final,
    'mean_zero_advantage_share': float(np.mean(progress['zero_advantage_share'] or [np.nan])),
    'table_state_bytes': registry.table_state_bytes(opt_state, labels),
    'model_state_bytes': tree_bytes(opt_state),
    'train_time_s': elapsed_before + time.perf_counter() - started,
    'diverged_at_step': progress['diverged_at_step'],
    'params_sha256': params_digest(params),
    'reward_curve': progress['reward_curve'],
    'train_reward_curve': progress['train_reward_curve'],
  }
  log(f'[rl] {name} lr {lr:g}: held-out reward {final:.4f} in {result["train_time_s"]:.0f} s')
  if checkpoints is not None:
    checkpoints.finish(result)
  return result


def negative_reward(run: dict) -> float:
  """The loss the learning-rate search minimizes: minus the final held-out reward."""
  reward = run['final_reward']
  return float('nan') if reward is None else -reward


def run_name(setup: str, batch: str, lr: float, seed: int) -> str:
  """The name a run's checkpoints and saved results go by, e.g. ``ember-2x4-lr0.0003-seed0``."""
  return f'{setup}-{batch}-lr{lr:g}-seed{seed}'


def run_settings(config: RLConfig, task: Task) -> dict:
  """Everything a run's numbers depend on, checked against saved runs."""
  varying = {'setups', 'batches', 'seeds', 'best_seeds', 'lrs', 'extend', 'out', 'checkpoint_dir',
             'checkpoint_every', 'cache_dir', 'pretrained_dir'}  # fmt: skip
  settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in varying}
  return {**settings, 'task': TASK, 'base_model': task.base_key, 'train_prompts': TRAIN_PROMPTS}


def run_rl(config: RLConfig, verbose: bool = True) -> dict:
  """Runs (or resumes) the comparison; returns and writes its results."""
  config = config.filled()
  check(config)
  log = print if verbose else (lambda *a, **k: None)
  started = time.perf_counter()
  task = build_task(config, verbose=verbose)
  settings = run_settings(config, task)
  out = Path(config.out)
  folder = checkpoints_lib.open_folder(config.checkpoint_dir, settings)
  runs_dir = checkpoints_lib.open_folder(out / 'runs', settings)
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
          point.append(train_rl(task, setup, batch, seed, lr, checkpoints, log))
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
  base_reward = task.held_out_reward(task.base_params, config.final_eval_prompts, -1)
  results = {
    'task': TASK,
    'config': dataclasses.asdict(config),
    'settings': settings,
    'base_model': {'key': task.base_key, 'held_out_reward': base_reward},
    **summarize(runs),
    'runs': runs,
    'data': {k: v for k, v in task.comparison.corpus.info.items() if k != 'val_file_list'},
    'environment': results_lib.environment(task.comparison.corpus.cache_dir),
    'total_time_s': time.perf_counter() - started,
  }
  results['tables'] = format_tables(results)
  out.mkdir(parents=True, exist_ok=True)
  results_lib.write_json(out / 'results.json', results)
  (out / 'results.md').write_text(results['tables'] + '\n')
  plot_curves(results, out / 'reward_curves.png')
  if verbose:
    print('\n' + results['tables'])
    print(f'[rl] wrote {out / "results.json"}, results.md and reward_curves.png')
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


def _reward(described: dict) -> str:
  mean = described['mean']
  if mean is None or math.isnan(mean):
    return 'diverged'
  std = described['std']
  return f'{mean:.3f}' if described['n'] < 2 else f'{mean:.3f} ± {std:.3f}'


def format_tables(results: dict) -> str:
  lines = [
    f'Base model {results["base_model"]["key"]}: held-out reward '
    f'{results["base_model"]["held_out_reward"]:.3f}.'
  ]
  for batch, by_setup in results['best'].items():
    prompts, group = parse_batch(batch)
    lines += ['', f'Batch {batch}: {prompts} prompts x {group} completions per step.', '']
    lrs = sorted({float(lr) for g in results['grid'][batch].values() for lr in g})
    rows = []
    for setup, by_lr in results['grid'][batch].items():
      cells = []
      for lr in lrs:
        cell = _reward(by_lr[str(lr)]) if str(lr) in by_lr else ''
        cells.append(f'**{cell}**' if cell and lr == by_setup[setup]['best_lr'] else cell)
      rows.append([setup, *cells])
    lines += [tables.markdown_table(['setup', *[f'lr {lr:g}' for lr in lrs]], rows), '']
    lines.append(
      tables.markdown_table(
        (
          'setup',
          'best lr',
          'seeds',
          'held-out reward',
          'groups with equal rewards',
          'opt. state, tables',
        ),  # fmt: skip
        (
          (
            setup,
            f'{s["best_lr"]:g}' + (' (grid edge)' if s['lr_on_grid_edge'] else ''),
            str(len(s['seeds'])),
            _reward(s['final_reward']),
            f'{s["zero_advantage_share"]:.0%}',
            tables.format_bytes(s['table_state_bytes']),
          )
          for setup, s in by_setup.items()
        ),
      )
    )
    pairs = results['paired'][batch]
    if pairs:
      lines += [
        '',
        tables.markdown_table(
          ('ember minus', 'seeds', 'held-out reward [95% CI]', 'verdict', 'per seed'),
          (
            (
              setup,
              str(len(d['seeds'])),
              tables.format_interval(d['final_reward']),
              d['final_reward']['verdict'],
              ' '.join(f'{v:+.3f}' for v in d['final_reward']['values']),
            )
            for setup, d in pairs.items()
          ),
        ),
      ]
    if batch in results['targets']:
      met = results['targets'][batch]['no_worse_than_adamw_tables']
      lines.append(f'\nEmber no worse than AdamW tables at {batch}: {"met" if met else "not met"}.')
  return '\n'.join(lines)


def plot_curves(results: dict, path: Path) -> None:
  """Held-out reward against step, one panel per batch shape, each setup at its best rate
  (mean over seeds; thin lines: each seed)."""
  import matplotlib.pyplot as plt

  batches = list(results['best'])
  fig, axes = plt.subplots(1, len(batches), figsize=(5.5 * len(batches), 4), squeeze=False)
  for ax, batch in zip(axes[0], batches, strict=True):
    for setup, s in results['best'][batch].items():
      runs = [
        r for r in results['runs']
        if r['batch'] == batch and r['setup'] == setup and r['lr'] == s['best_lr']
      ]  # fmt: skip
      color = registry.plot_style(setup)[0]
      curves = [np.array(r['reward_curve'], dtype=float) for r in runs if r['reward_curve']]
      for curve in curves:
        ax.plot(curve[:, 0], curve[:, 1], color=color, lw=0.6, alpha=0.4)
      same = [c for c in curves if c.shape == curves[0].shape]
      if same:
        mean = np.mean([c[:, 1] for c in same], axis=0)
        ax.plot(
          same[0][:, 0], mean, 'o-', color=color, ms=3, label=f'{setup} (lr {s["best_lr"]:g})'
        )
    ax.axhline(results['base_model']['held_out_reward'], color='black', lw=0.8, ls=':')
    ax.set_title(f'batch {batch} (prompts x group)')
    ax.set_xlabel('GRPO step')
    ax.set_ylabel('held-out reward')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def build_parser() -> cli.Parser:
  return cli.parser_for(
    RLConfig,
    PROG,
    'GRPO from the pretrained base model on a bracket-closing reward, under each table '
    'optimizer at its best learning rate, at small and large batches; compares them.',
  )


def main(argv: Sequence[str] | None = None) -> dict:
  args = build_parser().parse_args(argv)
  return cli.run_command(PROG, lambda: run_rl(cli.from_args(args, RLConfig)))


if __name__ == '__main__':
  main()
