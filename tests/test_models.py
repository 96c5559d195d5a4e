"""Tests of models/: the GPT, the data pipeline and the main job, on the tiny preset (CPU, fast).

The training tests use a small corpus made in the test (a folder of a few stdlib modules) and a
512-token vocabulary, so that they need no download and take seconds.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
import random
import shutil

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import bench_quality
from models import data as data_lib
from models import train as train_lib
from models.gpt import GPT, PRESETS, GPTConfig, path_names, table_labels, token_table_paths

# A few mid-sized stdlib modules: about 1 MB of real Python, enough for a 512-token BPE.
_CORPUS_MODULES = [
  "argparse.py",
  "ast.py",
  "calendar.py",
  "configparser.py",
  "csv.py",
  "dataclasses.py",
  "difflib.py",
  "enum.py",
  "fractions.py",
  "functools.py",
  "heapq.py",
  "inspect.py",
  "json/decoder.py",
  "json/encoder.py",
  "logging/__init__.py",
  "pathlib.py",
  "pprint.py",
  "shlex.py",
  "string.py",
  "textwrap.py",
  "typing.py",
  "zipfile.py",
]

TINY_STEPS = PRESETS["tiny"].steps
RESULT_FIELDS = {
  "setup",
  "seed",
  "lr",
  "table_lr",
  "final_val_loss",
  "rare_val_loss",
  "initial_val_loss",
  "final_train_loss",
  "table_state_bytes",
  "model_state_bytes",
  "mean_step_time_s",
  "first_step_time_s",
  "diverged_at_step",
  "train_loss_curve",
  "val_loss_curve",
}
SUMMARY_FIELDS = {
  "seeds",
  "lr",
  "table_lr",
  "final_val_loss",
  "final_val_loss_std",
  "rare_val_loss",
  "rare_val_loss_std",
  "table_state_bytes",
  "model_state_bytes",
  "mean_step_time_s",
}


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
  """A folder of text files (with a subfolder and a hidden file that must be ignored)."""
  root = tmp_path_factory.mktemp("corpus")
  stdlib = data_lib.stdlib_root()
  for rel in _CORPUS_MODULES:
    dest = root / rel.replace("/", "_")
    if rel.startswith("json/"):
      dest = root / "json" / Path(rel).name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(stdlib / rel, dest)
  (root / ".hidden").write_text("never read")
  return root


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
  return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def tiny_results(corpus_dir, cache_dir, tmp_path_factory) -> tuple[dict, Path]:
  """One main-job run of the tiny preset, all three setups, shared by the tests below."""
  out = tmp_path_factory.mktemp("out")
  cfg = train_lib.TrainConfig(
    preset="tiny",
    text=str(corpus_dir),
    cache_dir=str(cache_dir),
    out=str(out),
    progress=False,
    verbose=False,
  )
  return train_lib.run(cfg), out


# --- model -------------------------------------------------------------------------------------


@pytest.mark.parametrize("tie", [False, True])
def test_gpt_shapes_and_causality(tie):
  cfg = GPTConfig(
    vocab_size=300, max_len=16, d_model=32, n_layers=2, n_heads=4, d_ff=64, tie_embeddings=tie
  )
  model = GPT(cfg, rngs=nnx.Rngs(0))
  forward = nnx.jit(lambda model, tokens: model(tokens))  # One compile instead of op by op.
  tokens = jnp.arange(2 * 16).reshape(2, 16) % 300
  logits = forward(model, tokens)
  assert logits.shape == (2, 16, 300)
  # Changing the last token must not change the logits of earlier positions.
  changed = forward(model, tokens.at[:, -1].set(7))
  np.testing.assert_allclose(logits[:, :-1], changed[:, :-1], atol=1e-5)
  params = nnx.state(model, nnx.Param)
  assert ("lm_head" in params) != tie


def _tables(labels) -> set[tuple[str, ...]]:
  """The paths labelled ``"ember"``."""
  flat = jax.tree_util.tree_flatten_with_path(labels)[0]
  return {path_names(path) for path, label in flat if label == "ember"}


@pytest.mark.parametrize("tie", [False, True])
def test_library_finds_the_models_token_tables(tie):
  """ember_optax's detection finds the model's own tables, plus the position table.

  The library routes every ``Embed`` table to Ember, positions included; the main job passes
  the model's own labels, which keep ``pos_embed`` (not a token table) with AdamW.
  """
  import ember_optax

  for name in ("tiny", "small"):
    cfg = dataclasses.replace(
      PRESETS[name].model, vocab_size=PRESETS[name].vocab_size, tie_embeddings=tie
    )
    params = nnx.state(GPT(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    ours = _tables(table_labels(params, cfg))
    theirs = _tables(ember_optax.token_table_labels(params, vocab_size=cfg.vocab_size))
    assert ours == token_table_paths(cfg)
    assert theirs == ours | {("pos_embed", "embedding")}, f"{name}: {sorted(theirs)}"


def test_presets_keep_body_dims_off_the_vocab_size():
  """Detection by shape would mistake a body weight with a vocab-sized axis for a table."""
  for name, p in PRESETS.items():
    m = p.model
    body = {m.max_len, m.d_model, m.d_ff, 3 * m.d_model}
    assert p.vocab_size not in body, name
    assert p.seq_len <= m.max_len, name


# --- data --------------------------------------------------------------------------------------


def test_stdlib_split_is_deterministic_and_disjoint():
  root, files = data_lib.list_files(None)
  assert len(files) > 500  # The stdlib is there: no download needed.
  assert not any(f.startswith("test/") or "site-packages" in f for f in files)
  train, val = data_lib.split_files(files, 0.05)
  assert not set(train) & set(val)
  assert sorted(train + val) == files
  assert 0.02 < len(val) / len(files) < 0.1
  # The split depends on the paths only, not on their order.
  shuffled = files[:]
  random.Random(0).shuffle(shuffled)
  train2, val2 = data_lib.split_files(shuffled, 0.05)
  assert set(train2) == set(train) and set(val2) == set(val)
  # And is the same again on another call (no hidden randomness).
  assert data_lib.split_files(files, 0.05) == (train, val)


def test_split_keeps_both_sides_non_empty():
  train, val = data_lib.split_files(["a.txt", "b.txt"], 0.001)
  assert len(train) == 1 and len(val) == 1


def test_tokenizer_cache_is_reused(corpus_dir, tmp_path, monkeypatch):
  first = data_lib.load_corpus(corpus_dir, vocab_size=512, cache_dir=tmp_path)
  assert not first.cache_hit
  assert (first.cache_dir / "tokenizer.json").exists()

  def no_training(*args, **kwargs):
    raise AssertionError("the tokenizer was trained again instead of loaded from the cache")

  monkeypatch.setattr(data_lib, "_train_tokenizer", no_training)
  second = data_lib.load_corpus(corpus_dir, vocab_size=512, cache_dir=tmp_path)
  assert second.cache_hit and second.cache_dir == first.cache_dir
  np.testing.assert_array_equal(first.train_tokens, second.train_tokens)
  np.testing.assert_array_equal(first.val_tokens, second.val_tokens)
  monkeypatch.undo()
  # Another vocabulary size is another cache entry.
  other = data_lib.load_corpus(corpus_dir, vocab_size=400, cache_dir=tmp_path)
  assert not other.cache_hit and other.cache_dir != first.cache_dir


def test_text_folder_corpus(corpus_dir, cache_dir):
  corpus = data_lib.load_corpus(corpus_dir, vocab_size=512, cache_dir=cache_dir)
  info = corpus.info
  assert info["files"] == len(_CORPUS_MODULES)  # The hidden file is skipped.
  assert info["train_files"] + info["val_files"] == info["files"]
  assert info["train_files"] >= 1 and info["val_files"] >= 1
  assert corpus.train_tokens.max() < 512 and corpus.val_tokens.max() < 512
  # The tokenizer round-trips real text.
  tok = corpus.tokenizer()
  text = "def f(x):\n    return x + 1\n"
  assert tok.decode(tok.encode(text).ids) == text
  # Rare tokens: exactly the less frequent half of the vocabulary.
  rare = corpus.rare_token_mask()
  assert rare.sum() == 256
  assert corpus.train_counts[rare].max() <= corpus.train_counts[~rare].min()


def test_single_file_corpus(tmp_path):
  path = tmp_path / "one.txt"
  path.write_text("".join(f"line {i}: the quick brown fox {i * i}\n" for i in range(3000)))
  corpus = data_lib.load_corpus(path, vocab_size=300, cache_dir=tmp_path / "cache")
  assert corpus.info["files"] == 1
  assert corpus.val_tokens.size > 0 and corpus.train_tokens.size > 10 * corpus.val_tokens.size


def test_batches_are_deterministic():
  tokens = np.arange(10_000, dtype=np.uint16)
  a = list(data_lib.train_batches(tokens, batch_size=4, seq_len=16, steps=3, seed=1))
  b = list(data_lib.train_batches(tokens, batch_size=4, seq_len=16, steps=3, seed=1))
  c = list(data_lib.train_batches(tokens, batch_size=4, seq_len=16, steps=3, seed=2))
  for (xa, ya), (xb, yb) in zip(a, b, strict=True):
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)
    np.testing.assert_array_equal(xa[:, 1:], ya[:, :-1])  # Targets are inputs shifted by one.
  assert not np.array_equal(a[0][0], c[0][0])
  val = data_lib.val_batches(tokens, batch_size=4, seq_len=16, num_batches=3)
  assert len(val) == 3 and val[0][0].shape == (4, 16)


# --- main job ----------------------------------------------------------------------------------


def test_tiny_preset_trains_under_each_setup(tiny_results):
  results, _ = tiny_results
  runs = {r["setup"]: r for r in results["runs"]}
  assert set(runs) == set(train_lib.SETUPS)
  for setup, r in runs.items():
    start = r["initial_val_loss"]
    assert start == pytest.approx(np.log(512), abs=0.15), setup  # Uniform at init.
    # From uniform (ln 512 = 6.24) to well below: the unigram statistics and more are learned.
    assert r["final_val_loss"] < start - 0.75, (setup, start, r["final_val_loss"])
    assert r["final_train_loss"] < r["train_loss_curve"][0][1] - 0.75, setup
    # Still falling at the end, not stuck on a plateau.
    curve = [v for _, v in r["val_loss_curve"]]
    assert curve[-1] < curve[len(curve) // 2], (setup, curve)
    assert np.isfinite(r["rare_val_loss"])
  # Same initialization for every setup: identical starting validation loss.
  assert len({r["initial_val_loss"] for r in runs.values()}) == 1
  # Ember keeps V + D + 1 floats per table (plus step counts) instead of AdamW's 2 V D.
  assert runs["ember"]["table_state_bytes"] < runs["adamw"]["table_state_bytes"] / 50
  assert runs["ember"]["model_state_bytes"] < runs["adamw"]["model_state_bytes"]


def test_results_json_has_the_documented_fields(tiny_results):
  results, out = tiny_results
  saved = json.loads((out / "results.json").read_text())
  assert {"config", "model", "data", "runs", "summary", "table"} <= set(saved)
  assert saved["config"]["preset"] == "tiny" and saved["config"]["steps"] == TINY_STEPS
  for r in saved["runs"]:
    assert RESULT_FIELDS <= set(r)
    assert len(r["train_loss_curve"]) == TINY_STEPS
  assert set(saved["summary"]) == set(train_lib.SETUPS)
  for s in saved["summary"].values():
    assert SUMMARY_FIELDS <= set(s)
  assert (out / "loss_curves.png").stat().st_size > 1000


def test_cli_with_text_folder(corpus_dir, cache_dir, tmp_path):
  """``python -m models.train --text FOLDER`` end to end (one setup, few steps)."""
  results = train_lib.main(
    [
      "--preset",
      "tiny",
      "--text",
      str(corpus_dir),
      "--cache-dir",
      str(cache_dir),
      "--setups",
      "adamw",
      "--steps",
      "10",
      "--lr-for",
      "adamw=3e-3",
      "--table-lr",
      "1e-2",
      "--out",
      str(tmp_path),
      "--no-progress",
    ]
  )
  assert results["data"]["corpus"] == str(corpus_dir)
  run = results["runs"][0]
  assert (run["lr"], run["table_lr"]) == (3e-3, 1e-2)
  assert json.loads((tmp_path / "results.json").read_text())["config"]["text"] == str(corpus_dir)


# --- quality benchmark -------------------------------------------------------------------------


def _bench_args(corpus_dir, cache_dir, out, lrs):
  return [
    "--preset", "tiny", "--text", str(corpus_dir), "--cache-dir", str(cache_dir),
    "--steps", "8", "--eval-every", "4", "--final-eval-batches", "2",
    "--setups", "adamw", "ember", "--seeds", "0", "1", "--lrs", *lrs,
    "--out", str(out), "--no-progress",
  ]  # fmt: skip


def test_quality_benchmark_selects_pairs_and_merges(corpus_dir, cache_dir, tmp_path):
  """A two-point sweep; ``--summarize`` on its halves, one per learning rate, agrees with it."""
  whole = bench_quality.main(_bench_args(corpus_dir, cache_dir, tmp_path, ["1e-2", "3e-3"]))
  assert whole["lrs"] == [3e-3, 1e-2]
  assert len(whole["runs"]) == 2 * 2 * 2  # setups x seeds x learning rates
  for setup, best in whole["best"].items():
    by_lr = {lr: whole["grid"][setup][str(lr)]["final_val_loss"] for lr in whole["lrs"]}
    assert best["best_lr"] == min(by_lr, key=by_lr.get)
    assert best["lr_on_grid_edge"]  # Two points: both are edges.

  # Ember minus AdamW, seed by seed, each at its best learning rate.
  def loss(setup, seed):
    (run,) = [r for r in whole["runs"] if r["setup"] == setup and r["seed"] == seed
              and r["lr"] == whole["best"][setup]["best_lr"]]
    return run["final_val_loss"]

  diffs = [loss("ember", seed) - loss("adamw", seed) for seed in (0, 1)]
  paired = whole["paired"]["adamw"]
  assert paired["seeds"] == [0, 1]
  assert paired["final_val_loss"] == pytest.approx(np.mean(diffs))
  assert paired["final_val_loss_std"] == pytest.approx(np.std(diffs))
  assert "| ember minus | seeds |" in (tmp_path / "bench.md").read_text()

  saved = json.loads((tmp_path / "bench.json").read_text())
  halves = []
  for lr in whole["lrs"]:
    halves.append(tmp_path / f"lr{lr:g}.json")
    runs = [r for r in saved["runs"] if r["lr"] == lr]
    halves[-1].write_text(json.dumps({**saved, "runs": runs}))
  merged = bench_quality.main(["--summarize", *map(str, halves), "--out", str(tmp_path / "merged")])
  for key in ("lrs", "best", "paired", "grid_table", "table", "paired_table"):
    assert merged[key] == whole[key], key
  assert (tmp_path / "merged" / "bench.md").read_text() == (tmp_path / "bench.md").read_text()

  with pytest.raises(ValueError, match="repeats"):
    bench_quality.summarize_saved([tmp_path / "bench.json", halves[0]])
  other = json.loads(halves[1].read_text())
  other["config"]["steps"] = 9
  halves[1].write_text(json.dumps(other))
  with pytest.raises(ValueError, match=r"\['steps'\]"):
    bench_quality.summarize_saved(halves)
