"""The memory bench (``models.bench.memory`` and the modules it runs): exact optimizer-state
bytes, Ember's scratch against AdamW's, the batch search, the real run and the command line, on
small shapes (the published ones are the bench's own job; their parameter counts are checked
here, from shapes alone)."""

import dataclasses
import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
import pytest

from models.bench.memory import analysis as memory_analysis
from models.bench.memory import batch_search, step_memory
from models.bench.memory import precision as memory_setups
from models.bench.memory import real_step as real_step_memory
from models.bench.memory import run as bench_memory
from models.nets import published

FLOAT32_BYTES = 4
COUNT_BYTES = 4  # An int32 step count.


def small_shape(**changes) -> published.DecoderShape:
  base = published.DecoderShape(
    name='small-untied',
    title='a small untied test shape',
    vocab_size=1000,
    d_model=128,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    head_dim=32,
    d_ff=256,
    mlp='swiglu',
    norm='rmsnorm',
    bias='qkv',
    tied=False,
  )
  return dataclasses.replace(base, **changes)


SMALL_SHAPES = {
  'untied': small_shape(),
  'tied': small_shape(
    name='small-tied', tied=True, mlp='gelu', norm='layernorm', bias='all', max_positions=128
  ),
}


def abstract(shape, precision='float32'):
  dtype = memory_setups.PRECISIONS[precision]
  graphdef, params = published.abstract_model(shape, param_dtype=dtype)
  return graphdef, params, published.table_labels(params, shape)


@pytest.mark.parametrize('name', list(published.SHAPES))
def test_published_shapes_have_their_published_parameter_counts(name):
  shape = published.SHAPES[name]
  _, params = published.abstract_model(shape)
  n_params = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))
  assert n_params == shape.published_params
  tables = [
    leaf.shape
    for leaf, label in zip(
      jax.tree.leaves(params), jax.tree.leaves(published.table_labels(params, shape)), strict=True
    )
    if label == 'token_table'
  ]
  assert sorted(tables) == sorted(shape.table_shapes())


@pytest.mark.parametrize('precision', ['float32', 'bfloat16'])
@pytest.mark.parametrize('tying', ['untied', 'tied'])
def test_table_state_is_exactly_v_plus_d_plus_1_floats_per_table(tying, precision):
  shape = SMALL_SHAPES[tying]
  _, params, labels = abstract(shape, precision)
  n_params = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))
  tables = shape.table_shapes()
  factored = sum(v + d + 1 for v, d in tables) * FLOAT32_BYTES
  adam = sum(2 * v * d for v, d in tables) * FLOAT32_BYTES
  body_adam = 2 * (n_params - shape.table_params()) * FLOAT32_BYTES
  state = {
    name: memory_setups.optimizer_state_bytes(name, params, labels) for name in memory_setups.SETUPS
  }
  # Ember: row (V,), col (D,) and scale () per table, and one step count for all of them.
  assert state['ember'].tables == factored + COUNT_BYTES
  # Adafactor: v_row (V,), v_col (D,), a (1,) placeholder for v per table, and its count
  # (optax factors only axes of at least 128: every width here, and in the published shapes).
  assert state['adafactor'].tables == factored + COUNT_BYTES
  # AdamW: mu and nu, float32 even for bfloat16 parameters.
  assert state['adamw'].tables == adam
  assert state['adamw'].model == 2 * n_params * FLOAT32_BYTES + COUNT_BYTES
  for name in ('ember', 'adafactor'):
    assert state[name].model == body_adam + COUNT_BYTES + state[name].tables


@pytest.mark.parametrize('name', memory_setups.SETUPS)
def test_statistics_stay_float32_for_bfloat16_parameters(name):
  params = {
    'embed': jnp.full((64, 16), 0.1, jnp.bfloat16),
    'w': jnp.full((16, 8), 0.1, jnp.bfloat16),
  }
  labels = {'embed': 'token_table', 'w': 'body'}
  optimizer = memory_setups.float32_statistics_optimizer(name, labels)
  state = optimizer.init(params)

  @jax.jit
  def step(params, state):
    grads = jax.tree.map(lambda p: jnp.ones_like(p) * 0.01, params)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state, updates

  for _ in range(2):
    params, new_state, updates = step(params, state)
    assert jax.tree.map(lambda x: x.dtype, new_state) == jax.tree.map(lambda x: x.dtype, state)
    state = new_state
  floats = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
  assert floats and all(x.dtype == jnp.float32 for x in floats)
  assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))


@pytest.mark.parametrize(
  'memory',
  [
    lambda b: 1000 + 70 * b,  # Affine.
    lambda b: 1000 + 70 * b + (30 if b > 40 else 0),  # A step where XLA changes its plan.
    lambda b: 1000 + 70 * b + (b * b) // 50,  # Slowly convex.
    lambda b: 900 + 64 * ((b + 3) // 4) * 4,  # Flat stretches.
  ],
)
@pytest.mark.parametrize('budget', [1050, 1069, 1070, 3000, 8123, 20000])
def test_largest_fitting_batch_agrees_with_exhaustive_search(memory, budget):
  calls = []

  def counted(b):
    calls.append(b)
    return memory(b)

  expected = max((b for b in range(1, 1000) if memory(b) <= budget), default=0)
  assert batch_search.largest_fitting_batch(counted, budget, {}) == expected
  assert len(calls) == len(set(calls))  # Never compiles a batch twice.
  assert len(calls) <= 8


def test_largest_fitting_batch_confirms_both_sides_of_the_boundary():
  known = {}
  fit = batch_search.largest_fitting_batch(lambda b: 1000 + 70 * b, 3000, known)
  assert fit == 28 and known[28] <= 3000 < known[29]
  assert batch_search.largest_fitting_batch(lambda b: 1000 + 70 * b, 1000, {}) == 0


def _compiled_step(shape, optimizer, precision, batch=2, seq_len=64, options=None):
  graphdef, params, labels = abstract(shape, precision)
  builder = step_memory.StepBuilder(graphdef, params, labels, optimizer, seq_len)
  return builder.compile(batch, options)


def _step_memory(shape, optimizer, precision, batch=2, seq_len=64, options=None):
  return step_memory.StepMemory.of(
    _compiled_step(shape, optimizer, precision, batch, seq_len, options)
  )


def _extra_temp_share(shape, precision, batch=2, seq_len=64):
  """Ember's temporaries minus AdamW's, as a share of the largest table."""
  ember = _step_memory(shape, 'ember', precision, batch, seq_len)
  adamw = _step_memory(shape, 'adamw', precision, batch, seq_len)
  return (ember.temp - adamw.temp) / memory_analysis.largest_table_bytes(shape, precision)


@pytest.mark.parametrize(
  ('shape', 'precision', 'batch'),
  [
    (small_shape(vocab_size=32768, d_model=256, n_layers=1, tied=True), 'float32', 2),
    (small_shape(vocab_size=32768, d_model=256, n_layers=1, tied=True), 'bfloat16', 2),
    (small_shape(vocab_size=8192, n_layers=1), 'float32', 2),  # Untied: a (D, V) head too.
    (small_shape(vocab_size=8192, n_layers=1), 'bfloat16', 2),
    (SMALL_SHAPES['tied'], 'bfloat16', 1),
  ],
  ids=[
    'tied-32768x256-f32',
    'tied-32768x256-bf16',
    'untied-8192x128-f32',
    'untied-8192x128-bf16',
    'tied-1000x128-bf16-batch1',
  ],
)
def test_ember_adds_no_temporary_over_adamw_larger_than_5_percent_of_a_table(
  shape, precision, batch
):
  share = _extra_temp_share(shape, precision, batch)
  assert share <= memory_analysis.TEMP_ALLOWANCE


def test_ember_adds_no_table_sized_temporary_on_a_long_row_head():
  """A (D, V) head with rows of 1 MiB (V = 262144 in float32)."""
  shape = small_shape(vocab_size=262144, d_model=64, head_dim=16, d_ff=128, n_layers=1)
  share = _extra_temp_share(shape, 'float32', batch=1, seq_len=16)
  assert share <= memory_analysis.TEMP_ALLOWANCE


def test_a_small_bfloat16_model_pays_at_most_one_gradient_copy():
  """On CPU the statistics' reductions are fenced by optimization barriers, whose operand XLA
  must materialize: a bfloat16 gradient that XLA:CPU computes in float32 and converts gets a
  bfloat16 copy, which AdamW's fused update never needs. On this tiny model at batch 1 the copy
  lands on the step's peak; it is never more than that one copy (models/README.md, Memory)."""
  share = _extra_temp_share(SMALL_SHAPES['untied'], 'bfloat16', batch=1)
  assert share <= 1 + memory_analysis.TEMP_ALLOWANCE


def test_the_state_ember_frees_shows_in_the_step_arguments_byte_for_byte():
  shape = SMALL_SHAPES['untied']
  ember = _step_memory(shape, 'ember', 'float32')
  adamw = _step_memory(shape, 'adamw', 'float32')
  _, params, labels = abstract(shape, 'float32')
  saved = (
    memory_setups.optimizer_state_bytes('adamw', params, labels).model
    - memory_setups.optimizer_state_bytes('ember', params, labels).model
  )
  assert adamw.argument - ember.argument == saved
  # Outputs hold the same arrays, plus XLA:CPU's table of 8-byte pointers, one per output.
  assert adamw.output - ember.output == pytest.approx(saved, abs=8 * 16)


@pytest.mark.parametrize('optimizer', ['adamw', 'ember'])
def test_compiler_options_leave_the_memory_analysis_unchanged(optimizer):
  shape = SMALL_SHAPES['tied']
  default = _step_memory(shape, optimizer, 'bfloat16', options={})
  assert _step_memory(shape, optimizer, 'bfloat16') == default


def _run_bench(monkeypatch, tmp_path, *flags):
  shape = SMALL_SHAPES['tied']
  monkeypatch.setitem(published.SHAPES, shape.name, shape)
  return bench_memory.main(
    [
      '--models',
      shape.name,
      '--seq-len',
      '64',
      '--batch',
      '2',
      '--budgets',
      '0.05',
      '--no-reality-check',
      '--out',
      str(tmp_path),
      *flags,
    ]
  )


def _check_results(results, devices):
  """What every run must satisfy, whatever the shape: exact arguments, confirmed budgets."""
  measured = [
    memory_analysis.Measured.from_json(m) for m in results['single' if devices == 1 else 'sharded']
  ]
  assert measured and all(m.devices == devices for m in measured)
  for m in measured:
    # Arguments: parameters, optimizer state and the (batch, length + 1) int32 tokens.
    assert m.step.argument == m.params + m.state.model + m.batch * (m.seq_len + 1) * 4
    assert m.step.alias == m.params + m.state.model  # All donated, all written in place.
    for budget, fit in m.fits.items():
      budget_bytes = budget * memory_analysis.GIB
      assert fit >= 1 and m.steps_by_batch[fit].total <= budget_bytes
      assert m.steps_by_batch[fit + 1].total > budget_bytes
  assert {
    (c['model'], c['precision'], c['devices'])
    for c in results['temp_checks']
    if c['devices'] == devices
  } == {(m.model, m.precision, devices) for m in measured}
  return measured


@pytest.mark.slow
def test_bench_on_a_small_shape_end_to_end(monkeypatch, tmp_path):
  results = _run_bench(monkeypatch, tmp_path, '--precisions', 'float32', '--devices', '0')
  measured = _check_results(results, devices=1)
  _, params, labels = abstract(SMALL_SHAPES['tied'], 'float32')
  assert {m.optimizer: m.state for m in measured} == {
    name: memory_setups.optimizer_state_bytes(name, params, labels) for name in memory_setups.SETUPS
  }
  written = json.loads((tmp_path / 'bench_memory.json').read_text())
  assert written['single'] == results['single']
  report = (tmp_path / 'bench_memory.md').read_text()
  assert 'Largest batch that fits' in report and "Ember's temporaries" in report
  assert [path.name for path in tmp_path.glob('*.png')] == ['small-tied.png']


@pytest.mark.slow
def test_bench_sharded_over_8_devices_is_per_device(monkeypatch, tmp_path):
  results = _run_bench(
    monkeypatch,
    tmp_path,
    '--precisions',
    'bfloat16',
    '--optimizers',
    'adamw',
    'ember',
    '--devices',
    '8',
    '--fsdp-budgets',
    '0.02',
  )
  single = {m.optimizer: m for m in _check_results(results, devices=1)}
  for m in _check_results(results, devices=8):
    one = single[m.optimizer]
    # Every parameter of this shape has an axis divisible by 8 (widths, and the vocabulary
    # 1000 = 8 * 125), so FSDP splits all of them evenly: an eighth per device.
    assert m.params * 8 == one.params
    assert m.state.model < one.state.model
    assert m.step.argument < one.step.argument
  assert {c['devices'] for c in results['temp_checks']} == {1, 8}


@pytest.mark.slow
def test_analysis_against_a_real_run():
  real = real_step_memory.reality_check(['ember'])['ember']
  estimate = step_memory.StepMemory(**real['estimate'])
  # The arguments are resident as the analysis counts them, to within allocator rounding.
  assert abs(real['arguments_rss'] - estimate.argument) < 0.1 * estimate.argument + 2**21
  # A step holds at least its temporaries, plus what the matmul library allocates for itself.
  later = max(real['step_rss'][1:])
  step = estimate.temp + estimate.output - estimate.alias
  assert 0.9 * step <= later <= step + 2 * real['matmul_probe']['rss'] + 2**23
  assert real['matmul_probe']['temp'] == 0


def test_every_flag_shows_its_default():
  parser = bench_memory.build_parser()
  help_text = parser.format_help()
  flags = [a for a in parser._actions if a.option_strings and a.dest != 'help']
  assert flags and help_text.count('(default:') == len(flags)


@pytest.mark.parametrize(
  'argv',
  [
    ['--batch', '0'],
    ['--models', 'gpt5'],
    ['--models', 'gpt2', '--seq-len', '2048'],
    ['--budgets', '-1'],
    ['--fsdp-budgets', '0'],
    ['--jobs', '0'],
    ['--devices', '-2'],
    ['--precisions', 'float16'],
  ],
)
def test_bad_input_is_one_line_on_stderr(argv, capsys):
  with pytest.raises(SystemExit) as exit_info:
    bench_memory.main(argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1 and err.startswith('python -m models.bench.memory')


def test_command_line_bad_input_exits_without_traceback():
  process = subprocess.run(
    [sys.executable, '-m', 'models.bench.memory', '--seq-len', 'x'],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert process.returncode == 2
  assert len(process.stderr.strip().splitlines()) == 1
  assert 'Traceback' not in process.stderr
