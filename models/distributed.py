"""Train the GPT with ``ember_adamw`` over a device mesh, on one host or many.

One host, 8 simulated CPU devices::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m models.distributed --steps 5

Many hosts (run the same command on every host, with its own ``--process-id``)::

    python -m models.distributed --coordinator 10.0.0.1:1234 --num-processes 4 --process-id $I

``--layout`` picks where the parameters live on the mesh's one axis, ``"x"``:

* ``replicated``: every device holds every parameter (plain data parallelism).
* ``vocab``: the token tables are split along the vocabulary (``token_embed`` by rows, the
  ``(D, V)`` ``lm_head`` by columns); the body is replicated.
* ``fsdp``: every parameter is split along its largest axis that the mesh divides.

The batch is always split over ``"x"``. Batches are synthetic token ids, the same on every host
for a given step, so that runs on different process counts see the same data.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import dataclasses
import functools

from flax import nnx
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

import ember_optax
from ember_optax import state_shardings
from models.nets.gpt import GPT, GPTConfig, table_labels
from models.training.presets import PRESETS

LAYOUTS = ('replicated', 'vocab', 'fsdp')


def tiny_config() -> GPTConfig:
  """The tests' model: the ``tiny`` preset with its 512-token vocabulary."""
  preset = PRESETS['tiny']
  return dataclasses.replace(preset.model, vocab_size=preset.vocab_size)


def param_specs(params, layout: str, n_devices: int, axis: str = 'x'):
  """A ``PartitionSpec`` per parameter for ``layout`` (see the module docstring)."""
  if layout not in LAYOUTS:
    raise ValueError(f'layout must be one of {LAYOUTS}, got {layout!r}')

  def spec(path, leaf) -> P:
    name = path_str(path)
    if layout == 'vocab' and name == 'token_embed/embedding':
      return P(axis, None)
    if layout == 'vocab' and name == 'lm_head/kernel':
      return P(None, axis)
    if layout == 'fsdp' and leaf.ndim:
      dims = sorted(range(leaf.ndim), key=lambda d: -leaf.shape[d])
      for d in dims:
        if leaf.shape[d] % n_devices == 0:
          return P(*[axis if i == d else None for i in range(leaf.ndim)])
    return P()

  return jax.tree_util.tree_map_with_path(spec, params)


def path_str(path) -> str:
  """A pytree key path of plain dicts as ``a/b/c``."""
  return jax.tree_util.keystr(path, simple=True, separator='/')


def synthetic_batch(step: int, batch_size: int, seq_len: int, vocab_size: int, seed: int):
  """Token ids ``(batch_size, seq_len + 1)`` for ``step``: Zipf-like, the same on every host."""
  rng = np.random.default_rng([seed, step])
  ranks = rng.zipf(1.2, size=(batch_size, seq_len + 1)) - 1
  return (ranks % vocab_size).astype(np.int32)


def global_array(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global ``jax.Array`` from a host value every process holds in full."""
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def make_optimizer(config: GPTConfig, lr: float = 1e-2) -> optax.GradientTransformation:
  """``ember_adamw`` with the GPT's own table labels (``pos_embed`` is not a token table)."""
  return ember_optax.ember_adamw(lr, labels=functools.partial(table_labels, config=config))


def train(
  config: GPTConfig,
  *,
  mesh: jax.sharding.Mesh,
  layout: str = 'vocab',
  steps: int = 3,
  batch_size: int = 8,
  seq_len: int = 16,
  seed: int = 0,
  lr: float = 1e-2,
):
  """Trains from ``seed`` for ``steps`` steps; returns ``(params, opt_state, losses)``.

  Parameters and optimizer state are global ``jax.Array`` s laid out by ``layout`` over the
  mesh's ``"x"`` axis (which may span processes); the batch is split over ``"x"``.
  """
  model = GPT(config, rngs=nnx.Rngs(seed))
  graphdef, state = nnx.split(model, nnx.Param)
  host_params = jax.tree.map(np.asarray, nnx.to_pure_dict(state))
  del model, state
  tx = make_optimizer(config, lr)

  specs = param_specs(host_params, layout, mesh.shape['x'])
  p_shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
  params = jax.tree.map(global_array, host_params, p_shardings)
  s_shardings = state_shardings(jax.eval_shape(tx.init, params), p_shardings)
  opt_state = jax.jit(tx.init, out_shardings=s_shardings)(params)
  batch_sharding = NamedSharding(mesh, P('x', None))

  def loss_fn(params, tokens):
    logits = nnx.merge(graphdef, params)(tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

  @functools.partial(
    jax.jit,
    in_shardings=(p_shardings, s_shardings, batch_sharding),
    out_shardings=(p_shardings, s_shardings, None),
    donate_argnums=(0, 1),
  )
  def train_step(params, opt_state, tokens):
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for step in range(steps):
    tokens = synthetic_batch(step, batch_size, seq_len, config.vocab_size, seed)
    tokens = global_array(tokens, batch_sharding)
    params, opt_state, loss = train_step(params, opt_state, tokens)
    losses.append(loss)
  return params, opt_state, [float(loss) for loss in losses]


def gather_to_host(tree):
  """Every leaf as a full ``np.ndarray`` on every process."""
  from jax.experimental import multihost_utils

  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def flatten(params) -> dict[str, np.ndarray]:
  """``{"token_embed/embedding": array, ...}``: the parameters as host arrays, by path."""
  host = gather_to_host(params)
  return {
    path_str(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(host)
  }


def initialize(
  coordinator: str | None, num_processes: int, process_id: int, auto_detect: bool = False
) -> None:
  """Joins the ``jax.distributed`` job (a no-op for one process).

  On CPU, collectives across processes go through gloo; on GPU and TPU JAX picks the
  platform's own (NCCL, ICI/DCN) and ``jax.distributed.initialize()`` can usually find the
  coordinator by itself on managed clusters (Cloud TPU, SLURM, Open MPI).
  """
  if auto_detect:
    # Cloud TPU, SLURM and Open MPI tell JAX the coordinator and the process layout.
    jax.distributed.initialize()
    return
  if num_processes <= 1:
    return
  # Only the CPU backend reads this; GPUs and TPUs keep their own collectives.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(
    coordinator_address=coordinator,
    num_processes=num_processes,
    process_id=process_id,
    initialization_timeout=60,
  )


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog='python -m models.distributed', description=__doc__.split('\n')[0]
  )
  parser.add_argument(
    '--auto-detect',
    action='store_true',
    help='let jax.distributed find the cluster (Cloud TPU, SLURM, Open MPI)',
  )
  parser.add_argument(
    '--coordinator', default=None, help='host:port of process 0 (default: %(default)s, one process)'
  )
  parser.add_argument(
    '--num-processes',
    type=int,
    default=1,
    help='processes in the job, one per host (default: %(default)s)',
  )
  parser.add_argument(
    '--process-id',
    type=int,
    default=0,
    help="this process's index, 0 to --num-processes - 1 (default: %(default)s)",
  )
  parser.add_argument(
    '--layout',
    choices=LAYOUTS,
    default='vocab',
    help='where the parameters live on the mesh (default: %(default)s)',
  )
  parser.add_argument('--steps', type=int, default=3, help='training steps (default: %(default)s)')
  parser.add_argument(
    '--batch-size',
    type=int,
    default=8,
    help='global batch, split over the devices (default: %(default)s)',
  )
  parser.add_argument(
    '--seq-len', type=int, default=16, help='tokens per sequence (default: %(default)s)'
  )
  parser.add_argument(
    '--seed', type=int, default=0, help='initialization and batch seed (default: %(default)s)'
  )
  parser.add_argument('--lr', type=float, default=1e-2, help='learning rate (default: %(default)s)')
  parser.add_argument(
    '--out', default=None, help='write the final parameters here (.npz) (default: not written)'
  )
  return parser


def main(argv: Sequence[str] | None = None) -> dict:
  args = build_parser().parse_args(argv)
  initialize(args.coordinator, args.num_processes, args.process_id, args.auto_detect)
  mesh = jax.make_mesh((jax.device_count(),), ('x',), axis_types=(jax.sharding.AxisType.Auto,))
  params, _, losses = train(
    tiny_config(),
    mesh=mesh,
    layout=args.layout,
    steps=args.steps,
    batch_size=args.batch_size,
    seq_len=args.seq_len,
    seed=args.seed,
    lr=args.lr,
  )
  flat = flatten(params)
  if jax.process_index() == 0:
    print(f'processes={jax.process_count()} devices={jax.device_count()} losses={losses}')
    if args.out:
      np.savez(args.out, **flat)
  if jax.process_count() > 1:
    jax.distributed.shutdown()
  return {'losses': losses}


if __name__ == '__main__':
  main()
