"""RL's runs: GRPO from the pretrained base model on a task's reward, one run at a time.

A program's settings combine :class:`GRPOOptions` (the base model, the task, and what each run
does) with its own (``models.rl``: setups, batch shapes, seeds, the learning-rate search).
:meth:`RLComparison.build` loads what every run shares once: the base model (also GRPO's
reference model for the KL term), the task's prompts (``models.data.tasks``), the compiled
sampler; :func:`train_rl` is one run on the shared loop (``models.training.loop.run_steps``)::

  options = GRPOOptions(preset='tiny').filled()  # the preset's RL defaults filled in
  check_options(options)
  runs = RLComparison.build(options, setups=('ember',))  # the base model, the task's prompts
  result = train_rl(runs, Setup('ember'), '2x4', seed=0, lr=1e-3)

A step draws ``P`` training prompts, samples ``G`` completions of each (batch ``PxG``), scores
them with the task's reward and takes one GRPO update (``models.training.grpo``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import functools
import math
from typing import Any, TypeVar

from flax import nnx
import jax
import numpy as np

from ember_optax.diagnostics import tree_bytes
from models import cli
from models.cli import ConfigError, option
from models.data import bracket_prompts, tasks
from models.data.corpus import EOT
from models.nets import sampling
from models.nets.gpt import table_labels
from models.optim import registry
from models.training import checkpoints as checkpoints_lib
from models.training import grpo
from models.training import step as step_lib
from models.training.config import TrainConfig, corpus_option, resolve
from models.training.loop import Comparison, FinishedSteps, run_steps
from models.training.presets import PRESETS
from models.training.pretrained import PretrainConfig, load_or_pretrain

# Prompts of the training pool (drawn once), and the held-out prompts of the final evaluation.
TRAIN_PROMPTS = 4096
# Samples per call of the evaluation's sampler: one compiled shape for every evaluation.
EVAL_CHUNK = 128
# Completions of each held-out prompt in an evaluation.
EVAL_SAMPLES = 4

_Options = TypeVar('_Options', bound='GRPOOptions')


@dataclasses.dataclass(frozen=True)
class GRPOOptions:
  """The base model, the task and what each GRPO run does; ``None`` takes the preset's default.

  Its :meth:`filled` gives the preset's RL defaults (``Preset.rl``) to the settings the flags
  left unset, the program's own among them.
  """

  preset: str = option(
    'small', 'the base model (models.pretrain --preset) and its RL defaults', choices=tuple(PRESETS)
  )
  task: str = option(
    bracket_prompts.BracketTask.name, 'the prompts and their reward (models.data.tasks.TASKS)'
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

  def filled(self: _Options) -> _Options:
    """The settings with the preset's RL defaults (``RLDefaults``) where none was given."""
    defaults = PRESETS[self.preset if self.preset in PRESETS else 'small'].rl
    unset = {
      field.name: getattr(defaults, field.name)
      for field in dataclasses.fields(defaults)
      if hasattr(self, field.name) and getattr(self, field.name) is None
    }
    return dataclasses.replace(self, **unset)


def check_options(config: GRPOOptions) -> None:
  """Raises ``ConfigError`` naming the first of ``config``'s (filled) options that cannot run."""
  if config.preset not in PRESETS:
    raise ConfigError(f'--preset: unknown preset {config.preset!r}; choose from {list(PRESETS)}')
  if config.task not in tasks.TASKS:
    raise ConfigError(f'--task: unknown task {config.task!r}; choose from {list(tasks.TASKS)}')
  for name in ('steps', 'prompt_len', 'max_new_tokens', 'min_open', 'eval_prompts',
               'final_eval_prompts', 'eval_every'):  # fmt: skip
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
  max_len = PRESETS[config.preset].model.max_len
  if config.prompt_len + config.max_new_tokens > max_len:
    raise ConfigError(
      f'--prompt-len {config.prompt_len} + --max-new-tokens {config.max_new_tokens} exceeds the '
      f"{config.preset} model's {max_len} positions"
    )


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


@dataclasses.dataclass(frozen=True)
class RLComparison:
  """What every run shares: the settings, the base model, the task, the compiled sampler."""

  options: GRPOOptions
  comparison: Comparison  # Its plan builds each setup's optimizer and schedule.
  graphdef: nnx.GraphDef
  base_params: nnx.State
  base_key: str
  task: tasks.PromptTask
  eot: int
  sample: Callable
  logprobs: Callable

  @classmethod
  def build(cls, options: GRPOOptions, setups: Sequence[str], verbose: bool = True) -> RLComparison:
    """Loads the corpus and the base model (pretrained if missing) and draws the prompts."""
    train_config = TrainConfig(
      preset=options.preset,
      setups=tuple(setups),
      steps=options.steps,
      warmup_steps=options.warmup_steps,
      b2=options.b2,
      clip_norm=options.clip_norm,
      text=options.text,
      cache_dir=options.cache_dir,
      progress=False,
    )
    comparison = Comparison.build(resolve(train_config), verbose=verbose)
    pretrain_config = PretrainConfig(
      preset=options.preset,
      seed=options.pretrain_seed,
      text=options.text,
      cache_dir=options.cache_dir,
      pretrained_dir=options.pretrained_dir,
    )
    pretrained = load_or_pretrain(pretrain_config, corpus=comparison.corpus, verbose=verbose)
    comparison = dataclasses.replace(comparison, start_params=pretrained.params)
    held_out = max(options.final_eval_prompts, options.eval_prompts)
    spec = tasks.TaskSpec(options.prompt_len, TRAIN_PROMPTS, held_out, options.min_open)
    task = tasks.build_task(options.task, comparison.corpus, spec)
    graphdef = nnx.graphdef(comparison.init_model(0))

    @jax.jit
    def logprobs(params, prompts, completions):
      return grpo.completion_logprobs(nnx.merge(graphdef, params), prompts, completions)

    return cls(
      options=options,
      comparison=comparison,
      graphdef=graphdef,
      base_params=pretrained.params,
      base_key=pretrained.path.name,
      task=task,
      eot=comparison.corpus.tokenizer().token_to_id(EOT),
      sample=sampling.sampler(graphdef, options.max_new_tokens, options.temperature),
      logprobs=logprobs,
    )

  def held_out_reward(self, params: Any, prompts: int, key_seed: int) -> float:
    """Mean reward of 4 completions of each of the first ``prompts`` held-out prompts.

    The sampling keys depend on ``key_seed`` alone, so every setup is scored on the same draws.
    """
    held_out = self.task.held_out
    tokens = np.repeat(held_out.tokens[:prompts], EVAL_SAMPLES, axis=0)
    expected = [e for e in held_out.expected[:prompts] for _ in range(EVAL_SAMPLES)]
    rewards = []
    for i, start in enumerate(range(0, len(tokens), EVAL_CHUNK)):
      chunk = tokens[start : start + EVAL_CHUNK]
      missing = EVAL_CHUNK - len(chunk)
      padded = np.concatenate([chunk, np.repeat(chunk[:1], missing, axis=0)])
      key = jax.random.fold_in(jax.random.key(key_seed), i)
      completions = np.asarray(self.sample(params, padded, key))[: len(chunk)]
      rewards.append(self.task.reward(completions, expected[start : start + len(chunk)]))
    return float(np.concatenate(rewards).mean())


def train_rl(
  runs: RLComparison,
  setup: registry.Setup,
  batch: str,
  seed: int,
  lr: float,
  checkpoints: checkpoints_lib.RunCheckpoints | None = None,
  log: Callable[[str], None] = print,
) -> dict:
  """One GRPO run of ``setup`` at peak rate ``lr`` (body and tables) from the base model.

  Args:
    runs: what the runs share.
    setup: the optimizer setup.
    batch: the batch shape, ``"PROMPTSxGROUP"``.
    seed: the prompt-order and sampling seed: the same draws for every setup.
    lr: the peak learning rate.
    checkpoints: if given, a finished run is read back and an unfinished one resumes.
    log: where the run's messages go.

  Returns:
    The run's final held-out reward, its reward curves (held-out, and the training batches'),
    the share of groups with equal rewards, its optimizer-state bytes and the loop's measures.
  """
  options, task = runs.options, runs.task
  n_prompts, group = parse_batch(batch)
  tx = runs.comparison.optimizer(setup, (lr, lr))
  loss = functools.partial(
    grpo.grpo_loss, old_logps=None, epsilon=options.epsilon, beta=options.beta
  )
  update = jax.jit(
    step_lib.train_step(
      runs.graphdef,
      tx,
      lambda model, prompts, completions, mask, advantages, ref_logps: loss(
        model, prompts, completions, mask, advantages, ref_logps=ref_logps
      ),
    )
  )
  # The prompt order and the sampling keys depend on the seed alone: the same for every setup.
  order = np.random.default_rng(seed).integers(
    0, len(task.train.tokens), (options.steps, n_prompts)
  )

  def rows_from(start: int):
    return (np.repeat(order[number - 1], group) for number in range(start + 1, options.steps + 1))

  def step(number: int, state: dict, rows: np.ndarray) -> tuple[dict, dict]:
    params = state['params']
    prompts = task.train.tokens[rows]
    key = jax.random.fold_in(jax.random.key(seed), number)
    completions = runs.sample(params, prompts, key)
    rewards = task.reward(np.asarray(completions), [task.train.expected[i] for i in rows])
    advantages = grpo.group_advantages(rewards.reshape(n_prompts, group))
    mask = grpo.completion_mask(completions, runs.eot)
    ref_logps = runs.logprobs(runs.base_params, prompts, completions)
    params, opt_state, value = update(
      params, state['opt_state'], prompts, completions, mask, advantages, ref_logps
    )
    return {'params': params, 'opt_state': opt_state}, {'loss': value, 'rewards': rewards}

  def begin(state: dict) -> dict:
    start = runs.held_out_reward(state['params'], options.eval_prompts, 0)
    return {'reward_curve': [[0, start]], 'train_reward_curve': [], 'zero_advantage_share': []}

  def record(number: int, state: dict, metrics: dict, progress: dict) -> None:
    rewards = metrics['rewards']
    progress['train_reward_curve'].append([number, float(rewards.mean())])
    equal = rewards.reshape(n_prompts, group).std(axis=1) == 0
    progress['zero_advantage_share'].append(float(equal.mean()))
    if number % options.eval_every == 0 and number < options.steps:
      reward = runs.held_out_reward(state['params'], options.eval_prompts, number)
      progress['reward_curve'].append([number, reward])

  def finish(run: FinishedSteps) -> dict:
    params, opt_state, progress = run.state['params'], run.state['opt_state'], run.progress
    final = float('nan')
    if not run.diverged:
      final = runs.held_out_reward(params, options.final_eval_prompts, -1)
      last = runs.held_out_reward(params, options.eval_prompts, options.steps)
      progress['reward_curve'].append([options.steps, last])
    labels = table_labels(params, runs.comparison.plan.model)
    result = {
      'setup': setup.name,
      'batch': batch,
      'seed': seed,
      'lr': lr,
      'final_reward': final,
      'mean_zero_advantage_share': float(np.mean(progress['zero_advantage_share'] or [np.nan])),
      'table_state_bytes': registry.table_state_bytes(opt_state, labels),
      'model_state_bytes': tree_bytes(opt_state),
      **run.summary(),
      'reward_curve': progress['reward_curve'],
      'train_reward_curve': progress['train_reward_curve'],
    }
    log(f'{name}: held-out reward {final:.4f} in {result["train_time_s"]:.0f} s')
    return result

  name = f'[rl] {setup.name} {batch} seed {seed} lr {lr:g}'
  state = {'params': runs.base_params, 'opt_state': tx.init(runs.base_params)}
  result, _ = run_steps(
    name,
    state,
    steps=options.steps,
    step=step,
    batches=rows_from,
    begin=begin,
    record=record,
    finish=finish,
    checkpoints=checkpoints,
    log=log,
  )
  return result


def negative_reward(run: dict) -> float:
  """The loss the learning-rate search minimizes: minus the final held-out reward."""
  reward = run['final_reward']
  return float('nan') if reward is None else -reward
