"""Ember on a device mesh: sharded tables, communication, many hosts, checkpoints, determinism.

The 8-device checks run once, in a subprocess started with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (``tests/models/multidevice_checks.py``), so
that this process keeps one device; each check is reported here as its own test and compared with
a single-device run of this process. The many-host test
starts two ``jax.distributed`` processes of 4 devices each on 127.0.0.1.
"""

import json
import os
from pathlib import Path
import socket
import subprocess
import sys

import jax
import multidevice_checks as checks
import numpy as np
import optax
import pytest

import ember_optax
from models import distributed

pytestmark = [pytest.mark.multidevice, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
V, D = checks.V, checks.D
COLLECTIVE_OPS = {'all-reduce', 'all-gather', 'reduce-scatter', 'collective-permute', 'all-to-all'}


def _env(devices: int) -> dict[str, str]:
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env['JAX_PLATFORMS'] = 'cpu'
  env['PYTHONPATH'] = os.pathsep.join([str(ROOT), env.get('PYTHONPATH', '')])
  return env


@pytest.fixture(scope='module')
def eight_devices(tmp_path_factory):
  """``(report, out_dir)`` of ``tests/models/multidevice_checks.py`` run on 8 CPU devices."""
  out = tmp_path_factory.mktemp('eight_devices')
  proc = subprocess.run(
    [sys.executable, str(ROOT / 'tests' / 'models' / 'multidevice_checks.py'), str(out)],
    env=_env(8),
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=400,
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  report = json.loads((out / 'report.json').read_text())
  assert report['device_count'] == 8
  return report, out


def _result(report, name):
  entry = report[name]
  assert entry['ok'], entry['error']
  return entry['result']


def test_this_process_has_one_device():
  assert jax.device_count() == 1


@pytest.mark.parametrize('layout', list(checks.LAYOUTS))
def test_sharded_table_matches_one_device(eight_devices, layout):
  report, out = eight_devices
  result = _result(report, f'layout_{layout}')
  # Statistics laid out like the table axes they keep.
  for statistic in ('row', 'col', 'scale'):
    assert result['specs'][statistic].replace('None,', '').replace('(None)', '()') == (
      result['expected_specs'][statistic].replace('None,', '').replace('(None)', '()')
    ), (statistic, result['specs'])
  # Same numbers as this single-device process.
  _, _, shape, _ = checks.LAYOUTS[layout]
  table, grads = checks.table_problem(tuple(shape))
  tx = checks.table_optimizer()
  params, state = table, tx.init(table)
  step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(*tx.update(g, s, p)))
  for grad in grads:
    params, state = step(params, state, grad)
  sharded = np.load(out / f'layout_{layout}.npz')
  np.testing.assert_allclose(sharded['params'], params, rtol=1e-5, atol=1e-6)
  for statistic in ('row', 'col', 'scale'):
    np.testing.assert_allclose(sharded[statistic], getattr(state[0], statistic), rtol=1e-5)


def _ops(result):
  return [(op, elements) for op, _, elements, _ in result['collectives']]


@pytest.mark.parametrize('layout', list(checks.LAYOUTS))
def test_step_communication_is_vectors_not_tables(eight_devices, layout):
  result = _result(eight_devices[0], f'layout_{layout}')
  shape = result['shape']
  layers = shape[0] if len(shape) == 3 else 1
  table_elements = int(np.prod(shape))
  for op, elements in _ops(result):
    assert op == 'all-reduce', result['collectives']  # Never a gather of the table.
    assert elements <= layers * (V + D + 1) < table_elements, result['collectives']
  assert sum(e for _, e in _ops(result)) <= layers * (V + D + 1)


def test_row_sharded_table_sends_one_all_reduce_of_d_floats(eight_devices):
  # The reference implementation's figure.
  assert _ops(_result(eight_devices[0], 'layout_row')) == [('all-reduce', D)]


def test_replicated_table_sends_nothing(eight_devices):
  assert _ops(_result(eight_devices[0], 'layout_replicated')) == []


@pytest.mark.parametrize('layout', ['vocab', 'fsdp'])
def test_ember_adamw_step_on_gpt_moves_only_vectors(eight_devices, layout):
  result = _result(eight_devices[0], f'gpt_hlo_{layout}')
  vocab, width = result['vocab'], result['d_model']
  ops = _ops(result)
  assert ops, 'a sharded table needs its statistics reduced across shards'
  for op, elements in ops:
    assert op == 'all-reduce', result['collectives']
    assert elements <= 2 * (vocab + width + 1), result['collectives']


def _single_device_gpt(layout: str) -> dict[str, np.ndarray]:
  mesh = jax.make_mesh((1,), ('x',), axis_types=(jax.sharding.AxisType.Auto,))
  params, _, _ = distributed.train(
    distributed.tiny_config(), mesh=mesh, layout=layout, steps=checks.STEPS
  )
  return distributed.flatten(params)


def _assert_same_gpt(actual, expected, *, body_atol):
  assert sorted(actual) == sorted(expected)
  for name in expected:
    # Tables go through Ember; AdamW's normalized step amplifies round-off where a body
    # gradient is ~0 (e.g. the key bias, which attention ignores), so the body gets more room.
    atol = 1e-5 if name in ('token_embed/embedding', 'lm_head/kernel') else body_atol
    np.testing.assert_allclose(actual[name], expected[name], rtol=1e-4, atol=atol, err_msg=name)


@pytest.fixture(scope='module')
def one_device_gpt():
  return _single_device_gpt('vocab')


@pytest.mark.parametrize('layout', ['vocab', 'fsdp'])
def test_sharded_gpt_training_matches_one_device(eight_devices, one_device_gpt, layout):
  report, out = eight_devices
  result = _result(report, 'gpt_training')[layout]
  assert result['row_spec'] == {'token_embed': "P('x',)", 'lm_head': 'P(None,)'}
  assert result['col_spec'] == {'token_embed': 'P(None,)', 'lm_head': "P('x',)"}
  sharded = dict(np.load(out / f'gpt_{layout}.npz'))
  _assert_same_gpt(sharded, one_device_gpt, body_atol=2e-4)


def test_same_seed_same_device_count_is_bitwise_identical_on_8_devices(eight_devices):
  assert _result(eight_devices[0], 'determinism') == {'bitwise_equal': True}


def test_same_seed_is_bitwise_identical_on_one_device(one_device_gpt):
  again = _single_device_gpt('vocab')
  for name, value in one_device_gpt.items():
    np.testing.assert_array_equal(again[name], value, err_msg=name)


def test_orbax_checkpoint_restores_onto_another_layout_and_continues_bitwise(eight_devices):
  result = _result(eight_devices[0], 'checkpoint')
  assert result['restored_a_equal']
  assert result['restored_b_equal']
  assert result['restored_b_specs'] == {
    'embedding': "P(None, 'model')",
    'row': 'P(None,)',
    'col': "P('model',)",
  }
  assert result['continued_bitwise']
  assert result['continued_on_b_max_abs_diff'] < 1e-5


def test_nnx_optimizer_shards_statistics_from_param_metadata(eight_devices):
  result = _result(eight_devices[0], 'nnx_optimizer')
  assert result == {
    'row': "P('model',)",
    'col': "P('data',)",
    'scale': 'P()',
    'row_metadata': "P('model',)",
    'col_metadata': "P('data',)",
  }


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(('127.0.0.1', 0))
    return sock.getsockname()[1]


def test_two_processes_match_one_process_with_8_devices(eight_devices, tmp_path):
  """2 ``jax.distributed`` processes x 4 CPU devices, tables split over both processes."""
  _, out = eight_devices
  port = _free_port()
  result = tmp_path / 'two_processes.npz'
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        '-m',
        'models.distributed',
        '--layout',
        'vocab',
        '--steps',
        str(checks.STEPS),
        '--coordinator',
        f'127.0.0.1:{port}',
        '--num-processes',
        '2',
        '--process-id',
        str(i),
        '--out',
        str(result),
      ],
      env=_env(4),
      cwd=ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  logs = []
  try:
    for proc in procs:
      logs.append(proc.communicate(timeout=150)[0])
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  for proc, log in zip(procs, logs, strict=False):
    assert proc.returncode == 0, log[-3000:]
  assert 'processes=2 devices=8' in logs[0]
  _assert_same_gpt(dict(np.load(result)), dict(np.load(out / 'gpt_vocab.npz')), body_atol=2e-4)


SPARSE_CASES = [(ids, wd) for ids in ('replicated', 'batch') for wd in (0.0, 0.1)]


@pytest.mark.parametrize(('ids_layout', 'weight_decay'), SPARSE_CASES)
def test_sparse_ember_on_a_row_sharded_table_matches_one_device(
  eight_devices, ids_layout, weight_decay
):
  report, out = eight_devices
  result = _result(report, f'sparse_{ids_layout}_{weight_decay}')
  assert result['specs'] == {
    'table': "P('x', None)",
    'row': "P('x',)",
    'last_step': "P('x',)",
    'col': 'P(None,)',
  }
  if weight_decay == 0:
    # Every one of the 300 steps, against dense ember on one device in the 8-device process.
    assert result['max_abs_diff_from_dense_per_step'] < 1e-5
  table, batches = checks.sparse_problem()
  sparse = ember_optax.sparse_ember(1e-2, weight_decay=weight_decay)

  @jax.jit
  def step(table, state, ids, rows):
    updates, state = sparse.update(ember_optax.IndexedRows(ids, rows), state, table)
    return ember_optax.apply_row_updates(table, updates), state

  state = sparse.init(table)
  for ids, rows in batches:
    table, state = step(table, state, ids, rows)
  sharded = np.load(out / f'sparse_{ids_layout}_{weight_decay}.npz')
  np.testing.assert_allclose(sharded['table'], table, rtol=1e-5, atol=1e-6)
  row = ember_optax.sparse_ember_row_statistic(state)
  np.testing.assert_allclose(sharded['row'], row, rtol=1e-5, atol=1e-30)
  np.testing.assert_allclose(sharded['col'], state.col, rtol=1e-5)
  np.testing.assert_allclose(sharded['scale'], state.scale, rtol=1e-5)


@pytest.mark.parametrize(('ids_layout', 'weight_decay'), SPARSE_CASES)
def test_sparse_ember_step_sends_touched_rows_never_the_table(
  eight_devices, ids_layout, weight_decay
):
  result = _result(eight_devices[0], f'sparse_{ids_layout}_{weight_decay}')
  n_ids, width, rows = result['ids'], D, checks.SPARSE_ROWS
  ops = result['collectives']
  for op, shape, elements, _ in ops:
    # Nothing of the table's size, nor of its row statistic's.
    assert elements < rows * width // 4 and f'[{rows}' not in shape, ops
    if op == 'all-gather':
      assert elements == n_ids, ops  # Only the ids of a batch split over devices.
  # Touched rows: their gradients when the batch is split (to sum duplicates across devices),
  # the rows themselves with weight decay; plus a few vectors of one value per id.
  row_sets = (ids_layout == 'batch') + (weight_decay > 0)
  assert sum(elements for *_, elements, _ in ops) <= row_sets * n_ids * width + 5 * n_ids, ops
  if ids_layout == 'replicated' and weight_decay == 0:
    # The touched rows' statistics and last steps: 2 all-reduces of one value per id.
    assert [(op, elements) for op, _, elements, _ in ops] == [('all-reduce', n_ids)] * 2
