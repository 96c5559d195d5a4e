"""Checks that need 8 devices, run by ``tests/models/test_distributed.py`` in a subprocess.

Usage::

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/models/multidevice_checks.py OUT

Writes ``OUT/report.json`` (one entry per check: ``"ok"`` or a traceback, plus measurements) and
``OUT/<name>.npz`` arrays for the parent process to compare with its single-device runs.
"""

import functools
import json
import os
from pathlib import Path
import re
import sys
import tempfile
import traceback

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import jax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import ember_optax  # noqa: E402
from ember_optax import state_shardings  # noqa: E402

V, D, LAYERS, STEPS = 512, 64, 2, 3
AUTO = jax.sharding.AxisType.Auto

# name -> (mesh shape, mesh axes, table shape, table spec)
LAYOUTS = {
  'replicated': ((8,), ('x',), (V, D), P()),
  'row': ((8,), ('x',), (V, D), P('x', None)),
  'col': ((8,), ('x',), (V, D), P(None, 'x')),
  '2d': ((2, 4), ('data', 'model'), (V, D), P('data', 'model')),
  'stacked': ((2, 4), ('data', 'model'), (LAYERS, V, D), P(None, 'model', 'data')),
}

COLLECTIVE = re.compile(
  r'=\s*(?P<shape>\([^=]*?\)|\S+)\s+'
  r'(?P<op>all-reduce|all-gather|reduce-scatter|collective-permute|all-to-all)(?:-start)?\('
)
ARRAY = re.compile(r'(?P<dtype>[a-z]+[0-9]*)\[(?P<dims>[0-9,]*)\]')
ITEMSIZE = {'f32': 4, 'f64': 8, 'bf16': 2, 'f16': 2, 's32': 4, 'u32': 4, 'pred': 1, 's64': 8}


def table_problem(shape, seed=0):
  """A table and STEPS gradients (a third of the rows zero, as for absent tokens)."""
  rng = np.random.default_rng(seed)
  table = rng.normal(size=shape).astype(np.float32)
  grads = rng.normal(size=(STEPS,) + shape).astype(np.float32)
  grads *= rng.random(size=(STEPS,) + shape[:-1] + (1,)) > 1 / 3
  return table, grads


def table_optimizer():
  return ember_optax.ember(1e-2, weight_decay=0.1)


def collectives(hlo_text):
  """``[(op, result shape text, elements, bytes)]`` for every collective in an HLO module."""
  found = []
  for match in COLLECTIVE.finditer(hlo_text):
    arrays = [
      (dtype, int(np.prod([int(d) for d in dims.split(',') if d] or [1])))
      for dtype, dims in ARRAY.findall(match['shape'])
    ]
    elements = sum(size for _, size in arrays)
    nbytes = sum(ITEMSIZE.get(dtype, 4) * size for dtype, size in arrays)
    found.append((match['op'], match['shape'], elements, nbytes))
  return found


def check_layout(name, out):
  mesh_shape, axes, shape, spec = LAYOUTS[name]
  mesh = jax.make_mesh(mesh_shape, axes, axis_types=(AUTO,) * len(axes))
  table, grads = table_problem(shape)
  tx = table_optimizer()
  p_sharding = NamedSharding(mesh, spec)
  s_shardings = state_shardings(jax.eval_shape(tx.init, table), p_sharding)
  params = jax.device_put(table, p_sharding)
  state = jax.jit(tx.init, out_shardings=s_shardings)(params)

  @functools.partial(
    jax.jit,
    in_shardings=(p_sharding, s_shardings, p_sharding),
    out_shardings=(p_sharding, s_shardings),
  )
  def step(params, state, grad):
    updates, state = tx.update(grad, state, params)
    return optax.apply_updates(params, updates), state

  compiled = step.lower(params, state, jax.device_put(grads[0], p_sharding)).compile()
  ops = collectives(compiled.as_text())
  for grad in grads:
    params, state = step(params, state, jax.device_put(grad, p_sharding))
  ember_state = state[0]
  np.savez(
    out / f'layout_{name}.npz',
    params=np.asarray(params),
    row=np.asarray(ember_state.row),
    col=np.asarray(ember_state.col),
    scale=np.asarray(ember_state.scale),
  )
  specs = {
    'params': params.sharding.spec,
    'row': ember_state.row.sharding.spec,
    'col': ember_state.col.sharding.spec,
    'scale': ember_state.scale.sharding.spec,
  }
  return {
    'collectives': ops,
    'specs': {key: str(value) for key, value in specs.items()},
    'expected_specs': {
      'row': str(P(*tuple(spec)[:-1])) if len(spec) else str(P()),
      'col': str(P(*(tuple(spec)[:-2] + tuple(spec)[-1:]))) if len(spec) else str(P()),
      'scale': str(P(*tuple(spec)[:-2])) if len(spec) else str(P()),
    },
    'shape': list(shape),
    'mesh': dict(zip(axes, mesh_shape, strict=True)),
    'spec': str(spec),
  }


SPARSE_ROWS, SPARSE_IDS, SPARSE_STEPS = 8192, (8, 32), 300


def sparse_problem(seed=0):
  """A table and SPARSE_STEPS batches of Zipf ids and row gradients; most rows sit untouched for
  hundreds of steps (ids below 64 from step 20 on), then a last batch touches rows all over."""
  rng = np.random.default_rng(seed)
  table = rng.normal(size=(SPARSE_ROWS, D)).astype(np.float32)
  batches = []
  for t in range(SPARSE_STEPS):
    ids = np.minimum(rng.zipf(1.2, size=SPARSE_IDS) - 1, SPARSE_ROWS - 1)
    if 20 <= t < SPARSE_STEPS - 1:
      ids %= 64
    if t == SPARSE_STEPS - 1:
      ids = np.arange(np.prod(SPARSE_IDS)).reshape(SPARSE_IDS) * 31
    rows = rng.normal(size=SPARSE_IDS + (D,)).astype(np.float32)
    batches.append((ids.astype(np.int32), rows))
  return table, batches


def check_sparse(ids_layout, weight_decay, out):
  """sparse_ember on a row-sharded table: each step against dense ember on one device, and the
  collectives of the compiled step, with ids and row gradients replicated or split over the
  batch (data parallel)."""
  import jax.numpy as jnp

  mesh = jax.make_mesh((8,), ('x',), axis_types=(AUTO,))
  table, batches = sparse_problem()
  sparse = ember_optax.sparse_ember(1e-2, weight_decay=weight_decay)
  table_sharding = NamedSharding(mesh, P('x', None))
  state_sharding = state_shardings(jax.eval_shape(sparse.init, table), table_sharding)
  ids_sharding = NamedSharding(mesh, P() if ids_layout == 'replicated' else P('x'))
  rows_sharding = NamedSharding(mesh, P() if ids_layout == 'replicated' else P('x', None, None))

  @functools.partial(jax.jit, out_shardings=(table_sharding, state_sharding), donate_argnums=(0, 1))
  def sparse_step(table, state, ids, rows):
    updates, state = sparse.update(ember_optax.IndexedRows(ids, rows), state, table)
    return ember_optax.apply_row_updates(table, updates), state

  dense = ember_optax.ember(1e-2)

  @jax.jit
  def dense_step(table, state, ids, rows):
    grad = jnp.zeros_like(table).at[ids].add(rows)
    updates, state = dense.update(grad, state, table)
    return optax.apply_updates(table, updates), state

  sharded = jax.device_put(table, table_sharding)
  state = jax.jit(sparse.init, out_shardings=state_sharding)(sharded)
  ids0 = jax.device_put(batches[0][0], ids_sharding)
  rows0 = jax.device_put(batches[0][1], rows_sharding)
  ops = collectives(sparse_step.lower(sharded, state, ids0, rows0).compile().as_text())
  one_device = jax.devices()[0]
  dense_table = jax.device_put(table, one_device)
  dense_state = jax.jit(dense.init)(dense_table)
  worst = 0.0
  for ids, rows in batches:
    sharded, state = sparse_step(
      sharded, state, jax.device_put(ids, ids_sharding), jax.device_put(rows, rows_sharding)
    )
    # One step at a time: queued steps of 8 virtual devices on 2 cores can starve a collective.
    jax.block_until_ready((sharded, state))
    if weight_decay == 0:
      dense_table, dense_state = dense_step(dense_table, dense_state, ids, rows)
      worst = max(worst, float(np.max(np.abs(np.asarray(sharded) - np.asarray(dense_table)))))
  np.savez(
    out / f'sparse_{ids_layout}_{weight_decay}.npz',
    table=np.asarray(sharded),
    row=np.asarray(ember_optax.sparse_ember_row_statistic(state)),
    col=np.asarray(state.col),
    scale=np.asarray(state.scale),
  )
  return {
    'collectives': ops,
    'max_abs_diff_from_dense_per_step': worst if weight_decay == 0 else None,
    'specs': {
      'table': str(sharded.sharding.spec),
      'row': str(state.row.sharding.spec),
      'last_step': str(state.last_step.sharding.spec),
      'col': str(state.col.sharding.spec),
    },
    'ids': int(np.prod(SPARSE_IDS)),
  }


def gpt_setup(layout):
  from models import distributed

  config = distributed.tiny_config()
  mesh = jax.make_mesh((8,), ('x',), axis_types=(AUTO,))
  return distributed, config, mesh


def check_gpt_optimizer_hlo(layout):
  """Collectives of ember_adamw's step on the GPT's parameters (gradients given)."""
  from flax import nnx

  distributed, config, mesh = gpt_setup(layout)
  from models.nets.gpt import GPT

  params = nnx.to_pure_dict(nnx.split(GPT(config, rngs=nnx.Rngs(0)), nnx.Param)[1])
  tx = distributed.ember_setup_optimizer(config, params)
  specs = distributed.layout_specs(config, params, layout, 8)
  p_shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
  abstract_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  s_shardings = state_shardings(jax.eval_shape(tx.init, abstract_params), p_shardings)

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  jitted = jax.jit(
    step,
    in_shardings=(p_shardings, s_shardings, p_shardings),
    out_shardings=(p_shardings, s_shardings),
  )
  compiled = jitted.lower(
    abstract_params, jax.eval_shape(tx.init, abstract_params), abstract_params
  ).compile()
  return {
    'collectives': collectives(compiled.as_text()),
    'vocab': config.vocab_size,
    'd_model': config.d_model,
  }


def check_gpt_training(out):
  """Three steps on 8 devices, vocab-parallel and FSDP, saved for the parent to compare."""
  result = {}
  for layout in ('vocab', 'fsdp'):
    distributed, config, mesh = gpt_setup(layout)
    params, opt_state, losses = distributed.train(config, mesh=mesh, layout=layout, steps=STEPS)
    np.savez(out / f'gpt_{layout}.npz', **distributed.flatten(params))
    ember_state = opt_state.inner_states['token_table'].inner_state[0]
    tables = {'token_embed': 'embedding', 'lm_head': 'kernel'}
    result[layout] = {
      'losses': losses,
      'row_spec': {k: str(ember_state.row[k][v].sharding.spec) for k, v in tables.items()},
      'col_spec': {k: str(ember_state.col[k][v].sharding.spec) for k, v in tables.items()},
    }
  return result


def check_determinism(out):
  """A second 8-device FSDP run from the same seed is bitwise the first (``gpt_training``)."""
  distributed, config, mesh = gpt_setup('fsdp')
  params = distributed.train(config, mesh=mesh, layout='fsdp', steps=STEPS)[0]
  first = np.load(out / 'gpt_fsdp.npz')
  again = distributed.flatten(params)
  return {
    'bitwise_equal': sorted(first) == sorted(again)
    and all(np.array_equal(first[k], again[k]) for k in again)
  }


def check_checkpoint(tmp):
  """Orbax: save on one layout, restore onto another; stop/restore/continue is bitwise."""
  import orbax.checkpoint as ocp

  mesh = jax.make_mesh((2, 4), ('data', 'model'), axis_types=(AUTO,) * 2)
  table, grads = table_problem((V, D), seed=1)
  dense = np.random.default_rng(2).normal(size=(D, D)).astype(np.float32)
  host = {'embed': {'embedding': table}, 'mlp': {'kernel': dense}}
  tx = ember_optax.ember_adamw(1e-2, vocab_size=V)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), host)

  def shardings_for(specs):
    p = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
    return p, state_shardings(jax.eval_shape(tx.init, abstract), p)

  layout_a = shardings_for({'embed': {'embedding': P('model', 'data')}, 'mlp': {'kernel': P()}})
  layout_b = shardings_for({'embed': {'embedding': P(None, 'model')}, 'mlp': {'kernel': P('data')}})

  def make_step(layout):
    p, s = layout

    @functools.partial(jax.jit, in_shardings=(p, s, None), out_shardings=(p, s))
    def step(params, state, grad):
      grads = {'embed': {'embedding': grad}, 'mlp': {'kernel': params['mlp']['kernel'] * 0.1}}
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    return step

  def start(layout):
    params = jax.device_put(host, layout[0])
    return params, jax.jit(tx.init, out_shardings=layout[1])(params)

  step_a = make_step(layout_a)
  # Uninterrupted run.
  params, state = start(layout_a)
  for grad in grads:
    params, state = step_a(params, state, grad)
  uninterrupted = jax.tree.map(np.asarray, params)

  # Stopped after one step and saved.
  params, state = start(layout_a)
  params, state = step_a(params, state, grads[0])
  saved = jax.tree.map(np.asarray, {'params': params, 'opt_state': state})
  path = Path(tmp) / 'ckpt'
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, {'params': params, 'opt_state': state})
  del params, state

  def target(layout):
    shapes = {'params': abstract, 'opt_state': jax.eval_shape(tx.init, abstract)}
    shardings = {'params': layout[0], 'opt_state': layout[1]}
    return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings
    )

  with ocp.StandardCheckpointer() as checkpointer:
    restored_a = checkpointer.restore(path, target(layout_a))
    restored_b = checkpointer.restore(path, target(layout_b))

  def equal(x, y):
    return all(
      np.array_equal(a, b) for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y), strict=True)
    )

  ember_b = restored_b['opt_state'].inner_states['token_table'].inner_state[0]
  result = {
    'restored_a_equal': equal(jax.tree.map(np.asarray, restored_a), saved),
    'restored_b_equal': equal(jax.tree.map(np.asarray, restored_b), saved),
    'restored_b_specs': {
      'embedding': str(restored_b['params']['embed']['embedding'].sharding.spec),
      'row': str(ember_b.row['embed']['embedding'].sharding.spec),
      'col': str(ember_b.col['embed']['embedding'].sharding.spec),
    },
  }
  # Continue both restored runs.
  params, state = restored_a['params'], restored_a['opt_state']
  for grad in grads[1:]:
    params, state = step_a(params, state, grad)
  result['continued_bitwise'] = equal(jax.tree.map(np.asarray, params), uninterrupted)
  step_b = make_step(layout_b)
  params, state = restored_b['params'], restored_b['opt_state']
  for grad in grads[1:]:
    params, state = step_b(params, state, grad)
  result['continued_on_b_max_abs_diff'] = max(
    float(np.max(np.abs(a - b)))
    for a, b in zip(
      jax.tree.leaves(jax.tree.map(np.asarray, params)), jax.tree.leaves(uninterrupted), strict=True
    )
  )
  return result


def check_nnx_optimizer():
  """nnx.Optimizer over Params with sharding metadata: statistics sharded like their axes."""
  from flax import nnx
  import jax.numpy as jnp

  mesh = jax.make_mesh((2, 4), ('data', 'model'), axis_types=(AUTO,) * 2)
  init = nnx.initializers.normal(0.02)

  class Model(nnx.Module):
    def __init__(self, rngs):
      self.embed = nnx.Embed(
        V, D, embedding_init=nnx.with_partitioning(init, ('model', 'data')), rngs=rngs
      )
      self.dense = nnx.Linear(
        D, D, kernel_init=nnx.with_partitioning(init, ('data', 'model')), rngs=rngs
      )

    def __call__(self, tokens):
      return self.dense(self.embed(tokens))

  with jax.set_mesh(mesh):
    model = Model(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, ember_optax.ember_adamw(1e-2, vocab_size=V), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, tokens):
      grads = nnx.grad(lambda m: jnp.mean(m(tokens) ** 2))(model)
      optimizer.update(model, grads)

    step(model, optimizer, jnp.arange(32, dtype=jnp.int32).reshape(4, 8))
  ember_state = optimizer.opt_state.inner_states['token_table'].inner_state[0]
  specs = nnx.get_partition_spec(nnx.state(optimizer))
  spec_state = specs['opt_state']['inner_states']['token_table']['inner_state'][0]
  return {
    'row': str(ember_state.row['embed']['embedding'][...].sharding.spec),
    'col': str(ember_state.col['embed']['embedding'][...].sharding.spec),
    'scale': str(ember_state.scale['embed']['embedding'][...].sharding.spec),
    'row_metadata': str(spec_state['row']['embed']['embedding'].get_value()),
    'col_metadata': str(spec_state['col']['embed']['embedding'].get_value()),
  }


def main():
  out = Path(sys.argv[1])
  out.mkdir(parents=True, exist_ok=True)
  only = set(sys.argv[2:])
  checks = {f'layout_{name}': functools.partial(check_layout, name, out) for name in LAYOUTS}
  checks.update(
    {
      'gpt_hlo_vocab': functools.partial(check_gpt_optimizer_hlo, 'vocab'),
      'gpt_hlo_fsdp': functools.partial(check_gpt_optimizer_hlo, 'fsdp'),
      'gpt_training': functools.partial(check_gpt_training, out),
      'determinism': functools.partial(check_determinism, out),
      'checkpoint': lambda: check_checkpoint(tempfile.mkdtemp(dir=out)),
      'nnx_optimizer': check_nnx_optimizer,
    }
  )
  for ids_layout in ('replicated', 'batch'):
    for weight_decay in (0.0, 0.1):
      name = f'sparse_{ids_layout}_{weight_decay}'
      checks[name] = functools.partial(check_sparse, ids_layout, weight_decay, out)
  report = {'device_count': jax.device_count()}
  for name, check in checks.items():
    if only and name not in only:
      continue
    try:
      report[name] = {'ok': True, 'result': check()}
    except Exception:  # noqa: BLE001  (reported to the parent test)
      report[name] = {'ok': False, 'error': traceback.format_exc()}
    print(name, 'ok' if report[name]['ok'] else 'FAILED', flush=True)
  (out / 'report.json').write_text(json.dumps(report, indent=1, default=str))


if __name__ == '__main__':
  assert 'xla_force_host_platform_device_count=8' in os.environ.get('XLA_FLAGS', ''), (
    'run with XLA_FLAGS=--xla_force_host_platform_device_count=8'
  )
  main()
