"""Train the GPT with the main job's ``ember`` setup over a device mesh, on one host or many.

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

from collections.abc import Sequence
import dataclasses

from flax import nnx
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

from ember_optax import state_shardings
from models import cli
from models.cli import ConfigError, option
from models.data.synthetic import synthetic_batch
from models.nets.gpt import GPT, GPTConfig, table_labels
from models.optim import registry
from models.training import step as step_lib
from models.training.layouts import LAYOUTS, param_specs
from models.training.presets import PRESETS

PROG = 'python -m models.distributed'


def tiny_config() -> GPTConfig:
  """The tests' model: the ``tiny`` preset with its 512-token vocabulary."""
  preset = PRESETS['tiny']
  return dataclasses.replace(preset.model, vocab_size=preset.vocab_size)


def global_array(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global ``jax.Array`` from a host value every process holds in full."""
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def ember_setup_optimizer(
  config: GPTConfig, params, lr: float = 1e-2
) -> optax.GradientTransformation:
  """The main job's ``ember`` setup for the GPT's ``params``, routed by its own table labels."""
  labels = table_labels(params, config)
  return registry.make_optimizer(registry.Setup('ember'), labels, learning_rate=lr)


def layout_specs(config: GPTConfig, params, layout: str, n_devices: int):
  """A ``PartitionSpec`` per parameter of the GPT for ``layout`` (``models.training.layouts``)."""
  return param_specs(params, layout, n_devices, token_tables=table_labels(params, config))


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
  mesh's ``"x"`` axis (which may span processes); the batch is split over ``"x"``. The optimizer
  is the main job's ``ember`` setup with the GPT's own table labels.
  """
  model = GPT(config, rngs=nnx.Rngs(seed))
  graphdef, state = nnx.split(model, nnx.Param)
  host_params = jax.tree.map(np.asarray, nnx.to_pure_dict(state))
  del model, state
  tx = ember_setup_optimizer(config, host_params, lr)
  specs = layout_specs(config, host_params, layout, mesh.shape['x'])
  p_shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
  params = jax.tree.map(global_array, host_params, p_shardings)
  s_shardings = state_shardings(jax.eval_shape(tx.init, params), p_shardings)
  opt_state = jax.jit(tx.init, out_shardings=s_shardings)(params)
  batch_sharding = NamedSharding(mesh, P('x', None))
  train_step = jax.jit(
    step_lib.train_step(graphdef, tx),
    in_shardings=(p_shardings, s_shardings, batch_sharding, batch_sharding),
    out_shardings=(p_shardings, s_shardings, None),
    donate_argnums=(0, 1),
  )
  losses = []
  for step in range(steps):
    tokens = synthetic_batch(step, batch_size, seq_len, config.vocab_size, seed)
    inputs = global_array(tokens[:, :-1], batch_sharding)
    targets = global_array(tokens[:, 1:], batch_sharding)
    params, opt_state, loss = train_step(params, opt_state, inputs, targets)
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
    jax.tree_util.keystr(path, simple=True, separator='/'): np.asarray(leaf)
    for path, leaf in jax.tree_util.tree_leaves_with_path(host)
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


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
  """The distributed program's settings."""

  auto_detect: bool = option(
    False, 'let jax.distributed find the cluster (Cloud TPU, SLURM, Open MPI)'
  )
  coordinator: str | None = option(None, 'host:port of process 0 (default: one process)')
  num_processes: int = option(1, 'processes in the job, one per host')
  process_id: int = option(0, "this process's index, 0 to --num-processes - 1")
  layout: str = option('vocab', 'where the parameters live on the mesh', choices=LAYOUTS)
  steps: int = option(3, 'training steps')
  batch_size: int = option(8, 'global batch, split over the devices')
  seq_len: int = option(16, 'tokens per sequence')
  seed: int = option(0, 'initialization and batch seed')
  lr: float = option(1e-2, 'learning rate')
  out: str | None = option(None, 'write the final parameters here (.npz) (default: not written)')


def build_parser() -> cli.Parser:
  return cli.parser_for(
    DistributedConfig,
    PROG,
    __doc__.split('\n')[0],
  )


def check(args: DistributedConfig) -> None:
  """Raises ``ConfigError`` naming the first setting that cannot be run."""
  for name in ('num_processes', 'steps', 'batch_size', 'seq_len'):
    if getattr(args, name) < 1:
      raise ConfigError(f'{cli.flag(name)} must be at least 1, got {getattr(args, name)}')
  if not 0 <= args.process_id < args.num_processes:
    raise ConfigError(f'--process-id must be in [0, {args.num_processes}), got {args.process_id}')
  if args.num_processes > 1 and not args.coordinator:
    raise ConfigError('--num-processes > 1 needs --coordinator HOST:PORT (or --auto-detect)')
  if not args.lr > 0:
    raise ConfigError(f'--lr must be positive, got {args.lr}')


def run(args: DistributedConfig) -> dict:
  """Joins the job, trains, and (on process 0) prints the losses and writes ``args.out``."""
  check(args)
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


def main(argv: Sequence[str] | None = None) -> dict:
  args = build_parser().parse_args(argv)
  return cli.run_command(PROG, lambda: run(cli.from_args(args, DistributedConfig)))


if __name__ == '__main__':
  main()
