"""The main job: train one GPT under several optimizer setups and compare them.

    python -m models.train                      # small preset, stdlib corpus, all three setups
    python -m models.train --preset tiny --steps 100 --out /tmp/run
    python -m models.train --text ~/my_corpus --setups adamw ember --seeds 0 1 2

Setups (the body -- attention, MLP, norms, positions -- always gets AdamW; they differ only on the
token tables, i.e. the input embedding and the LM head):

* ``adamw``: ``optax.adamw`` on every parameter.
* ``ember``: ``ember_optax.ember_adamw``: Ember on the token tables, AdamW on the body.
* ``adafactor``: ``optax.adafactor`` on the token tables, AdamW on the body; the closest factored
  peer. It runs with ``multiply_by_parameter_scale=False`` so that its learning rate means what
  AdamW's and Ember's do (a step size, not a fraction of the parameter's norm); its other settings
  are optax's defaults (no momentum, update clipping at 1, ``decay_rate=0.8``).

Within a seed every setup starts from the same initialization and sees the same batches in the same
order, so the differences come from the optimizer only. Each run reports its final validation loss,
its validation loss on rare-token targets (targets whose id is in the less frequent half of the
vocabulary by training count), the optimizer-state bytes of the token tables and of the whole
model, and the mean step time. ``--out DIR`` writes ``results.json`` and ``loss_curves.png``.

Optimizer-state bytes: *whole model* is the sum of ``nbytes`` over the array leaves of the setup's
optimizer state after ``init``. *Token tables* is the same sum for the setup's token-table
transform (``optax.adamw``, ``ember_optax.ember`` or ``optax.adafactor``, with the run's settings)
initialized on the token-table leaves alone (``jax.eval_shape``, nothing is allocated).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
import dataclasses
import functools
import json
import math
from pathlib import Path
import time

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import ember_optax
from ember_optax.diagnostics import tree_bytes
from models import data as data_lib
from models.gpt import (
  GPT,
  PRESETS,
  GPTConfig,
  count_params,
  path_names,
  table_labels,
  token_table_paths,
)

SETUPS = ("adamw", "ember", "adafactor")
# Label names follow ember_optax.token_table_labels: "ember" marks a token table, "adamw" the rest.
TABLE, BODY = "ember", "adamw"


@dataclasses.dataclass
class TrainConfig:
  """Everything a run depends on. ``None`` fields take the preset's value.

  Learning rates: ``lr`` is the peak learning rate of every parameter group of every setup;
  ``table_lr`` overrides it for the token tables. ``setup_lr`` / ``setup_table_lr`` override both
  per setup (``{"ember": 3e-3}``), which is how the quality benchmark runs each setup at its own
  best learning rate. Every group follows the same schedule shape: linear warm-up, then cosine
  decay to a tenth of the peak.
  """

  preset: str = "small"
  setups: tuple[str, ...] = SETUPS
  seeds: tuple[int, ...] = (0,)
  steps: int | None = None
  batch_size: int | None = None
  seq_len: int | None = None
  lr: float | None = None
  table_lr: float | None = None
  setup_lr: dict[str, float] = dataclasses.field(default_factory=dict)
  setup_table_lr: dict[str, float] = dataclasses.field(default_factory=dict)
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 0.0
  warmup_steps: int | None = None
  eval_every: int | None = None
  eval_batches: int | None = None
  final_eval_batches: int | None = None
  vocab_size: int | None = None
  tie_embeddings: bool = False
  text: str | None = None
  val_fraction: float = data_lib.DEFAULT_VAL_FRACTION
  tokenizer_train_chars: int = data_lib.DEFAULT_TOKENIZER_TRAIN_CHARS
  cache_dir: str | None = None
  out: str | None = None
  progress: bool = True
  verbose: bool = True

  def resolved(self) -> TrainConfig:
    """A copy with every ``None`` filled from the preset, checked."""
    if self.preset not in PRESETS:
      raise ValueError(f"unknown preset {self.preset!r}; choose from {sorted(PRESETS)}")
    p = PRESETS[self.preset]
    fill = {
      "steps": p.steps,
      "batch_size": p.batch_size,
      "seq_len": p.seq_len,
      "lr": p.lr,
      "warmup_steps": p.warmup_steps,
      "eval_every": p.eval_every,
      "eval_batches": p.eval_batches,
      "final_eval_batches": p.final_eval_batches,
      "vocab_size": p.vocab_size,
    }
    cfg = dataclasses.replace(
      self,
      **{k: v for k, v in fill.items() if getattr(self, k) is None},
      setups=tuple(self.setups),
      seeds=tuple(self.seeds),
    )
    cfg.warmup_steps = min(cfg.warmup_steps, max(cfg.steps - 1, 0))
    unknown = set(cfg.setups) - set(SETUPS)
    unknown |= (set(cfg.setup_lr) | set(cfg.setup_table_lr)) - set(SETUPS)
    if unknown:
      raise ValueError(f"unknown setup(s) {sorted(unknown)}; choose from {list(SETUPS)}")
    if cfg.steps < 1:
      raise ValueError(f"steps must be >= 1, got {cfg.steps}")
    return cfg

  def lrs(self, setup: str) -> tuple[float, float]:
    """(body peak LR, token-table peak LR) of ``setup``."""
    body = self.setup_lr.get(setup, self.lr)
    # Precedence for the tables: the setup's own table LR, the shared table LR, the body's.
    table = self.setup_table_lr.get(setup, self.table_lr if self.table_lr is not None else body)
    return body, table


def model_config(cfg: TrainConfig) -> GPTConfig:
  """The preset's model shape with the run's vocabulary, length and tying."""
  base = PRESETS[cfg.preset].model
  return dataclasses.replace(
    base,
    vocab_size=cfg.vocab_size,
    max_len=max(base.max_len, cfg.seq_len),
    tie_embeddings=cfg.tie_embeddings,
  )


def schedule(peak: float, cfg: TrainConfig) -> optax.Schedule:
  """Linear warm-up to ``peak``, then cosine decay to ``peak / 10`` at the last step."""
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=peak,
    warmup_steps=cfg.warmup_steps,
    decay_steps=max(cfg.steps, cfg.warmup_steps + 1),
    end_value=peak / 10,
  )


def table_transform(setup: str, cfg: TrainConfig) -> optax.GradientTransformation:
  """The transform a setup applies to the token tables (also used to measure their state)."""
  _, table_peak = cfg.lrs(setup)
  lr = schedule(table_peak, cfg)
  if setup == "adamw":
    return optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
  if setup == "ember":
    return ember_optax.ember(lr, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
  if setup == "adafactor":
    # optax's Adafactor does not multiply its weight decay by the learning rate; passing
    # weight_decay * lr(t) as the (scheduled) rate makes it the same decoupled decay as AdamW's.
    wd = cfg.weight_decay
    return optax.adafactor(
      lr,
      multiply_by_parameter_scale=False,
      weight_decay_rate=(lambda count: wd * lr(count)) if wd else None,
    )
  raise ValueError(f"unknown setup {setup!r}; choose from {list(SETUPS)}")


def make_optimizer(setup: str, cfg: TrainConfig) -> optax.GradientTransformation:
  """The whole-model optimizer of ``setup`` (``cfg`` resolved).

  Token tables are routed by this GPT's own labels (``models.gpt.table_labels``: the token
  embedding and the LM head), passed to ``ember_adamw`` as ``labels=``. Detection alone would
  also send the learned-position ``Embed`` table to Ember, as it does every ``Embed`` table;
  the comparison keeps positions with AdamW so that all setups differ on the token tables only.
  """
  body_peak, table_peak = cfg.lrs(setup)
  body_lr = schedule(body_peak, cfg)
  model_cfg = model_config(cfg)

  def labels(params):
    return table_labels(params, model_cfg)

  body = optax.adamw(body_lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
  if setup == "adamw" and table_peak == body_peak:
    return body  # One optax.adamw over everything: the plain baseline.
  if setup == "ember":
    return ember_optax.ember_adamw(
      body_lr,
      vocab_size=cfg.vocab_size,
      b1=cfg.b1,
      b2=cfg.b2,
      eps=cfg.eps,
      weight_decay=cfg.weight_decay,
      ember_learning_rate=schedule(table_peak, cfg),
      ember_weight_decay=cfg.weight_decay,  # The same decoupled decay as the other setups.
      labels=labels,
    )
  return optax.partition({TABLE: table_transform(setup, cfg), BODY: body}, labels)


def _table_params(params, model_cfg: GPTConfig) -> dict:
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  wanted = token_table_paths(model_cfg)
  return {"/".join(path_names(p)): x for p, x in flat if path_names(p) in wanted}


def _loss_and_metrics(model: GPT, inputs, targets, rare_mask):
  logits = model(inputs).astype(jnp.float32)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  rare = rare_mask[targets]
  return losses.sum(), losses.size, jnp.where(rare, losses, 0.0).sum(), rare.sum()


@functools.partial(jax.jit, static_argnums=0)
def _eval_step(graphdef, params, inputs, targets, rare_mask):
  # Module level with a static graph: compiled once and reused by every setup and seed.
  return _loss_and_metrics(nnx.merge(graphdef, params), inputs, targets, rare_mask)


def train_one(
  setup: str,
  seed: int,
  cfg: TrainConfig,
  corpus: data_lib.Corpus,
  curve_batches: Sequence,
  final_batches: Sequence,
) -> dict:
  """Trains one model under one setup from seed ``seed``; returns its metrics."""
  model_cfg = model_config(cfg)
  # Same seed -> same initialization for every setup.
  model = GPT(model_cfg, rngs=nnx.Rngs(seed))
  # Functional NNX: split once into a static graph and a pytree of parameters, and jit a pure
  # step over the pytree. This keeps the per-step Python work to a minimum, which is most of the
  # cost of a small model on a CPU.
  graphdef, params = nnx.split(model, nnx.Param)
  del model
  tx = make_optimizer(setup, cfg)
  opt_state = tx.init(params)
  model_state_bytes = tree_bytes(opt_state)
  table_state_bytes = tree_bytes(
    jax.eval_shape(table_transform(setup, cfg).init, _table_params(params, model_cfg))
  )
  rare_mask = jnp.asarray(corpus.rare_token_mask())

  def loss_fn(params, inputs, targets):
    model = nnx.merge(graphdef, params)
    total, count, _, _ = _loss_and_metrics(model, inputs, targets, rare_mask)
    return total / count

  @jax.jit
  def train_step(params, opt_state, inputs, targets):
    loss, grads = jax.value_and_grad(loss_fn)(params, inputs, targets)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def evaluate(params, batches) -> tuple[float, float]:
    sums = np.zeros(4)
    for inputs, targets in batches:
      sums += np.array([float(v) for v in _eval_step(graphdef, params, inputs, targets, rare_mask)])
    return sums[0] / sums[1], (sums[2] / sums[3] if sums[3] else float("nan"))

  val_curve = [(0, evaluate(params, curve_batches)[0])]
  train_curve, step_times, diverged_at = [], [], None
  batches = data_lib.train_batches(
    corpus.train_tokens,
    batch_size=cfg.batch_size,
    seq_len=cfg.seq_len,
    steps=cfg.steps,
    seed=seed,
  )
  bar = None
  if cfg.progress:
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.steps, desc=f"{setup:>9} seed {seed}", unit="step", leave=True)
  for step, (inputs, targets) in enumerate(batches, start=1):
    start = time.perf_counter()
    params, opt_state, loss = train_step(params, opt_state, inputs, targets)
    loss = float(loss)  # Waits for the step: the timing covers the whole step.
    step_times.append(time.perf_counter() - start)
    if not math.isfinite(loss):
      # A diverged run is a result (the learning rate is too high), not a crash: it is reported
      # with NaN losses so that a learning-rate sweep can go on.
      diverged_at = step
      print(f"[train] {setup} seed {seed}: loss is {loss} at step {step}; stopping this run")
      break
    train_curve.append((step, loss))
    if step % cfg.eval_every == 0 or step == cfg.steps:
      val_curve.append((step, evaluate(params, curve_batches)[0]))
    if bar is not None:
      bar.set_postfix(loss=f"{loss:.3f}", val=f"{val_curve[-1][1]:.3f}", refresh=False)
      bar.update()
  if bar is not None:
    bar.close()
  if diverged_at is None:
    final_val, rare_val = evaluate(params, final_batches)
  else:
    final_val = rare_val = float("nan")
  body_lr, table_lr = cfg.lrs(setup)
  # The first step compiles; the mean is over the others (all steps if there is only one).
  timed = step_times[1:] or step_times
  return {
    "setup": setup,
    "seed": seed,
    "lr": body_lr,
    "table_lr": table_lr,
    "final_val_loss": final_val,
    "rare_val_loss": rare_val,
    "initial_val_loss": val_curve[0][1],
    "final_train_loss": float(np.mean([v for _, v in train_curve[-10:]]))
    if diverged_at is None
    else float("nan"),
    "table_state_bytes": table_state_bytes,
    "model_state_bytes": model_state_bytes,
    "mean_step_time_s": float(np.mean(timed)),
    "first_step_time_s": step_times[0],
    "diverged_at_step": diverged_at,
    "train_loss_curve": train_curve,
    "val_loss_curve": val_curve,
  }


def summarize(runs: list[dict], setups: Sequence[str]) -> dict:
  """Per setup: mean and (population) std over seeds of the losses, and the rest."""
  summary = {}
  for setup in setups:
    rs = [r for r in runs if r["setup"] == setup]
    if not rs:
      continue
    final = np.array([r["final_val_loss"] for r in rs])
    rare = np.array([r["rare_val_loss"] for r in rs])
    summary[setup] = {
      "seeds": [r["seed"] for r in rs],
      "lr": rs[0]["lr"],
      "table_lr": rs[0]["table_lr"],
      "final_val_loss": float(final.mean()),
      "final_val_loss_std": float(final.std()),
      "rare_val_loss": float(rare.mean()),
      "rare_val_loss_std": float(rare.std()),
      "table_state_bytes": rs[0]["table_state_bytes"],
      "model_state_bytes": rs[0]["model_state_bytes"],
      "mean_step_time_s": float(np.mean([r["mean_step_time_s"] for r in rs])),
    }
  return summary


def format_bytes(n: int) -> str:
  """Human-readable byte count (powers of 1024)."""
  for unit in ("B", "KiB", "MiB", "GiB"):
    if n < 1024 or unit == "GiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024
  raise AssertionError


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
  """A Markdown table from a header and rows of already formatted cells."""
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines)


def format_mean_std(stats: dict, key: str, signed: bool = False) -> str:
  """``stats[key] ± stats[key + "_std"]`` to four decimals."""
  mean = f"{stats[key]:+.4f}" if signed else f"{stats[key]:.4f}"
  return f"{mean} ± {stats[key + '_std']:.4f}"


def format_table(summary: dict) -> str:
  """The summary as a Markdown table (one row per setup)."""
  multi = any(len(s["seeds"]) > 1 for s in summary.values())

  def loss(s, key):
    return format_mean_std(s, key) if multi else f"{s[key]:.4f}"

  header = ("setup", "lr (body / tables)", "final val loss", "rare-token val loss",
            "opt. state, tables", "opt. state, model", "step time")
  return markdown_table(header, (
    (name, f"{s['lr']:.3g} / {s['table_lr']:.3g}", loss(s, "final_val_loss"),
     loss(s, "rare_val_loss"), format_bytes(s["table_state_bytes"]),
     format_bytes(s["model_state_bytes"]), f"{1e3 * s['mean_step_time_s']:.1f} ms")
    for name, s in summary.items()
  ))


def plot_curves(runs: list[dict], path: Path, title: str = "") -> None:
  """Training loss (smoothed) and validation loss against step, one colour per setup."""
  import matplotlib

  matplotlib.use("Agg")  # No display needed.
  import matplotlib.pyplot as plt

  fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(11, 4.2))
  colors = {"adamw": "tab:blue", "ember": "tab:red", "adafactor": "tab:green"}
  labelled = set()
  for r in runs:
    color = colors.get(r["setup"], None)
    label = r["setup"] if r["setup"] not in labelled else None
    labelled.add(r["setup"])
    steps, losses = np.array(r["train_loss_curve"]).T
    # Exponential moving average, so the per-batch noise does not hide the trend.
    smooth, acc = [], losses[0]
    for v in losses:
      acc = 0.9 * acc + 0.1 * v
      smooth.append(acc)
    ax_train.plot(steps, smooth, color=color, label=label, lw=1.2)
    vs, vl = np.array(r["val_loss_curve"]).T
    ax_val.plot(vs, vl, "o-", color=color, label=label, lw=1.2, ms=3)
  for ax, name in ((ax_train, "train loss (EMA 0.9)"), (ax_val, "validation loss")):
    ax.set_xlabel("step")
    ax.set_ylabel(name)
    ax.grid(alpha=0.3)
    ax.legend()
  # Zoom in on the part where the setups differ; the first steps would flatten everything.
  all_val = np.concatenate([np.array(r["val_loss_curve"])[1:, 1] for r in runs])
  if all_val.size:
    ax_val.set_ylim(all_val.min() - 0.1, np.percentile(all_val, 90) + 0.3)
  all_train = np.concatenate([np.array(r["train_loss_curve"])[:, 1] for r in runs])
  ax_train.set_ylim(all_train.min() - 0.1, np.percentile(all_train, 75) + 0.3)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def load_corpus(cfg: TrainConfig) -> data_lib.Corpus:
  """The tokenized corpus that ``cfg`` (resolved) names."""
  return data_lib.load_corpus(
    cfg.text,
    vocab_size=cfg.vocab_size,
    val_fraction=cfg.val_fraction,
    tokenizer_train_chars=cfg.tokenizer_train_chars,
    cache_dir=cfg.cache_dir,
    verbose=cfg.verbose,
  )


def run(config: TrainConfig, corpus: data_lib.Corpus | None = None) -> dict:
  """Runs the comparison and returns the results dict (also written to ``config.out``).

  Returns:
    ``{"config": ..., "model": ..., "data": ..., "runs": [...], "summary": {...},
    "table": str}``: one ``runs`` entry per (setup, seed), and per setup in ``summary`` the
    mean and std over seeds. See ``train_one`` for the fields of a run.
  """
  cfg = config.resolved()
  log = print if cfg.verbose else (lambda *a, **k: None)
  if corpus is None:
    corpus = load_corpus(cfg)
  model_cfg = model_config(cfg)
  curve_batches = data_lib.val_batches(
    corpus.val_tokens,
    batch_size=cfg.batch_size,
    seq_len=cfg.seq_len,
    num_batches=cfg.eval_batches,
  )
  final_batches = data_lib.val_batches(
    corpus.val_tokens,
    batch_size=cfg.batch_size,
    seq_len=cfg.seq_len,
    num_batches=cfg.final_eval_batches,
  )
  n_params = count_params(GPT(model_cfg, rngs=nnx.Rngs(0)))
  log(
    f"[train] preset {cfg.preset}: {n_params:,} parameters "
    f"(d_model {model_cfg.d_model}, {model_cfg.n_layers} layers, vocab {model_cfg.vocab_size},"
    f" {'tied' if model_cfg.tie_embeddings else 'untied'} head); {cfg.steps} steps of "
    f"{cfg.batch_size}x{cfg.seq_len} tokens; corpus {corpus.info['corpus']} "
    f"({corpus.info['train_tokens']:,} train / {corpus.info['val_tokens']:,} val tokens); "
    f"{jax.devices()[0].platform}"
  )
  started = time.perf_counter()
  runs = []
  for seed in cfg.seeds:
    for setup in cfg.setups:
      runs.append(train_one(setup, seed, cfg, corpus, curve_batches, final_batches))
  summary = summarize(runs, cfg.setups)
  table = format_table(summary)
  results = {
    "config": dataclasses.asdict(cfg),
    "model": {**dataclasses.asdict(model_cfg), "params": n_params},
    "data": {k: v for k, v in corpus.info.items() if k != "val_file_list"},
    "runs": runs,
    "summary": summary,
    "table": table,
    "total_time_s": time.perf_counter() - started,
    "device": str(jax.devices()[0]),
  }
  log("\n" + table)
  log(f"\n[train] {len(runs)} runs in {results['total_time_s']:.0f}s")
  if cfg.out:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot_curves(
      runs,
      out / "loss_curves.png",
      title=f"GPT {cfg.preset}, {corpus.info['corpus']}, {cfg.steps} steps",
    )
    log(f"[train] wrote {out / 'results.json'} and {out / 'loss_curves.png'}")
  return results


def _setup_floats(items: Sequence[str] | None, flag: str) -> dict[str, float]:
  out = {}
  for item in items or ():
    name, sep, value = item.partition("=")
    if not sep:
      raise SystemExit(f"{flag} expects SETUP=LR, got {item!r}")
    out[name] = float(value)
  return out


def build_parser() -> argparse.ArgumentParser:
  """The command-line interface (shared with ``models.bench_quality``)."""
  p = argparse.ArgumentParser(
    prog="python -m models.train",
    description="Train a GPT under each optimizer setup (adamw, ember, adafactor) from the "
    "same initialization and batches, and compare them.",
  )
  p.add_argument(
    "--preset",
    default="small",
    choices=list(PRESETS),
    help="model size and its training settings: tiny (seconds, for tests), small (the default, "
    "minutes on a CPU), medium and large (for a GPU/TPU)",
  )
  p.add_argument("--setups", nargs="+", default=list(SETUPS), choices=SETUPS)
  p.add_argument(
    "--seeds",
    nargs="+",
    type=int,
    default=[0],
    help="each seed sets the initialization and the batch order (default: %(default)s)",
  )
  p.add_argument("--steps", type=int)
  p.add_argument("--batch-size", type=int)
  p.add_argument("--seq-len", type=int)
  p.add_argument("--lr", type=float, help="peak learning rate of every group and setup")
  p.add_argument("--table-lr", type=float, help="peak learning rate of the token tables")
  p.add_argument(
    "--lr-for",
    nargs="+",
    metavar="SETUP=LR",
    help="per-setup peak learning rate, e.g. --lr-for adamw=1e-3 ember=3e-3",
  )
  p.add_argument(
    "--table-lr-for",
    nargs="+",
    metavar="SETUP=LR",
    help="per-setup peak learning rate of the token tables",
  )
  p.add_argument("--b1", type=float, default=0.9)
  p.add_argument("--b2", type=float, default=0.999)
  p.add_argument("--eps", type=float, default=1e-8)
  p.add_argument("--weight-decay", type=float, default=0.0)
  p.add_argument("--warmup-steps", type=int)
  p.add_argument("--eval-every", type=int)
  p.add_argument("--eval-batches", type=int)
  p.add_argument("--final-eval-batches", type=int)
  p.add_argument("--vocab-size", type=int)
  p.add_argument("--tie-embeddings", action="store_true")
  p.add_argument("--text", help="a text file or folder to train on instead of the stdlib")
  p.add_argument("--val-fraction", type=float, default=data_lib.DEFAULT_VAL_FRACTION)
  p.add_argument(
    "--tokenizer-train-chars", type=int, default=data_lib.DEFAULT_TOKENIZER_TRAIN_CHARS
  )
  p.add_argument("--cache-dir", help="default: $EMBER_CACHE or ~/.cache/ember_optax")
  p.add_argument("--out", help="folder for results.json and loss_curves.png")
  p.add_argument("--no-progress", action="store_true", help="no progress bars")
  return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
  """Maps parsed command-line arguments to a ``TrainConfig``."""
  return TrainConfig(
    preset=args.preset,
    setups=tuple(args.setups),
    seeds=tuple(args.seeds),
    steps=args.steps,
    batch_size=args.batch_size,
    seq_len=args.seq_len,
    lr=args.lr,
    table_lr=args.table_lr,
    setup_lr=_setup_floats(args.lr_for, "--lr-for"),
    setup_table_lr=_setup_floats(args.table_lr_for, "--table-lr-for"),
    b1=args.b1,
    b2=args.b2,
    eps=args.eps,
    weight_decay=args.weight_decay,
    warmup_steps=args.warmup_steps,
    eval_every=args.eval_every,
    eval_batches=args.eval_batches,
    final_eval_batches=args.final_eval_batches,
    vocab_size=args.vocab_size,
    tie_embeddings=args.tie_embeddings,
    text=args.text,
    val_fraction=args.val_fraction,
    tokenizer_train_chars=args.tokenizer_train_chars,
    cache_dir=args.cache_dir,
    out=getattr(args, "out", None),
    progress=not args.no_progress,
  )


def main(argv: Sequence[str] | None = None) -> dict:
  args = build_parser().parse_args(argv)
  return run(config_from_args(args))


if __name__ == "__main__":
  main()
