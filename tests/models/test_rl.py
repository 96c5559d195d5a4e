"""``python -m models.rl``: the GRPO comparison end to end at the tiny preset."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import pytest

from models import rl
from models.data import tasks
from models.reporting import results as results_lib

pytestmark = pytest.mark.slow


def _args(post_training_args, root, *more):
  return post_training_args(root, '--checkpoint-dir', str(root / 'out' / 'checkpoints'), *more)


@pytest.fixture(scope='module')
def finished(post_training_args, tmp_path_factory):
  root = tmp_path_factory.mktemp('rl')
  out = root / 'out'
  args = _args(post_training_args, root, '--batches', '2x2', '1x4')
  return args, out, rl.main(args)


def test_writes_strict_results_and_the_reward_plot(finished):
  _, out, results = finished
  for name in ('results.json', 'results.md', 'reward_curves.png'):
    assert (out / name).exists(), name
  saved = results_lib.read_json(out / 'results.json')
  assert set(saved['best']) == {'2x2', '1x4'}
  for by_setup in saved['best'].values():
    assert set(by_setup) == {'adamw', 'ember', 'rowwise'}
    for s in by_setup.values():
      assert 0 <= s['final_reward']['mean'] <= 1
  assert set(saved['paired']['2x2']) == {'adamw', 'rowwise'}
  for run in saved['runs']:
    steps = [step for step, _ in run['reward_curve']]
    assert steps == sorted(steps) and steps[-1] == 4
    assert all(0 <= reward <= 1 for _, reward in run['reward_curve'])
  assert 0 <= saved['base_model']['held_out_reward'] <= 1


def test_setups_see_the_same_prompts_and_a_seed_repeats(finished):
  args, _, results = finished
  again = rl.main(args)  # Read back from the saved runs.
  assert [r['params_sha256'] for r in again['runs']] == [
    r['params_sha256'] for r in results['runs']
  ]
  ember, adamw = (
    next(r for r in results['runs'] if r['setup'] == name and r['batch'] == '2x2')
    for name in ('ember', 'adamw')
  )
  # Step 0 of every setup is the base model, scored on the same draws.
  assert ember['reward_curve'][0] == adamw['reward_curve'][0]
  assert ember['params_sha256'] != adamw['params_sha256']


def test_groups_of_equal_rewards_are_counted(finished):
  _, _, results = finished
  for run in results['runs']:
    assert 0 <= run['mean_zero_advantage_share'] <= 1
  assert np.isfinite([r['final_reward'] for r in results['runs']]).all()


@pytest.mark.parametrize(
  'more, message',
  [
    (['--batches', '4x1'], 'GROUP >= 2'),
    (['--batches', 'eight'], 'expected PROMPTSxGROUP'),
    (['--setups', 'ember+muon'], 'beside an AdamW body'),
    (['--setups', 'lion'], "unknown table optimizer 'lion'"),
    (['--prompt-len', '60'], 'exceeds the tiny model'),
    (['--beta', '-1'], '--beta must be'),
    (['--lrs', '0'], '--lrs must be positive'),
    (['--task', 'nope'], "--task: unknown task 'nope'"),
  ],
)
def test_bad_input_is_one_line_before_anything_trains(
  post_training_args, tmp_path, refused, more, message
):
  args = _args(post_training_args, tmp_path, *more)
  refused(rl.main, args, rl.PROG, message)
  assert not (tmp_path / 'pretrained').exists() and not (tmp_path / 'out').exists()


@dataclasses.dataclass(frozen=True)
class EchoTask:
  """A second task (``tasks.PromptTask``): a completion earns the share of its tokens that
  repeat its prompt's last token."""

  name: ClassVar[str] = 'echo-last-token-v1'
  train: tasks.TaskPrompts
  held_out: tasks.TaskPrompts

  def reward(self, completions, expected):
    repeats = np.asarray(completions) == np.asarray(expected)[:, None]
    return repeats.mean(axis=1).astype(np.float32)


def echo_task(corpus, spec: tasks.TaskSpec) -> EchoTask:
  def prompts(tokens, n):
    starts = np.random.default_rng(0).integers(0, tokens.size - spec.prompt_len, n)
    rows = np.stack([tokens[s : s + spec.prompt_len] for s in starts]).astype(np.int32)
    return tasks.TaskPrompts(rows, tuple(int(row[-1]) for row in rows))

  return EchoTask(
    prompts(corpus.train_tokens, spec.train_prompts),
    prompts(corpus.val_tokens, spec.held_out_prompts),
  )


def test_a_new_task_is_a_registry_entry(finished, tmp_path, monkeypatch):
  args, _, _ = finished
  monkeypatch.setitem(tasks.TASKS, EchoTask.name, echo_task)
  out = tmp_path / 'echo'
  more = ['--task', EchoTask.name, '--batches', '2x2', '--setups', 'adamw', 'ember',
          '--out', str(out), '--checkpoint-dir', str(out / 'checkpoints')]  # fmt: skip
  results = rl.main([*args, *more])
  assert results['task'] == results['settings']['task'] == EchoTask.name
  assert set(results['best']['2x2']) == {'adamw', 'ember'}
  for run in results['runs']:
    assert all(0 <= reward <= 1 for _, reward in run['reward_curve'] + run['train_reward_curve'])
  again = rl.main([*args, *more])  # Read back: the runs are matched by the task's name too.
  assert [r['params_sha256'] for r in again['runs']] == [
    r['params_sha256'] for r in results['runs']
  ]
