"""Reference models, data, training and benchmark programs for Ember (not installed with the wheel).

Programs (each ``python -m ...``, every flag in ``--help``):

* ``models.train``: the main job, the comparison of optimizer setups on a GPT.
* ``models.bench.quality``: each setup at its own best learning rate, over seeds.
* ``models.bench.scaling``: the quality benchmark across model sizes, batch sizes and bodies.
* ``models.bench.row_steps``: each token table's row steps, every step, at one point of the sweep.
* ``models.bench.step``: the time of one optimizer step on a token table.
* ``models.bench.sparse``: a table's update against its number of rows, sparse and dense.
* ``models.bench.memory``: the memory of a whole train step at published model shapes.
* ``models.bench.ngram``: a hashed n-gram table of millions of rows, by table optimizer.
* ``models.bench.muon_tables``: table setups beside a Muon body at large batch, one change each.
* ``models.distributed``: the main job's Ember setup over a device mesh, on one host or many.
* ``models.pretrain``: the base model of post-training, trained once and cached.
* ``models.sft``: supervised fine-tuning from the base model, each table optimizer compared.
* ``models.bench.tunix_sft``: the SFT task in Tunix's ``PeftTrainer`` and in our loop.
* ``models.rl``: GRPO from the base model on a verifiable reward, each table optimizer compared.

Packages:

* ``models.nets``: the GPT (Flax NNX) with its sampler and an optional hashed n-gram table, and
  the published decoder shapes, with their table labels.
* ``models.data``: the embedded corpus (the Python standard library's code), its BPE, batches,
  and the post-training tasks built from it, with their registry (``models.data.tasks``).
* ``models.optim``: the one registry of table optimizers and bodies, and their setups
  (``models.optim.registry``); row-wise RMSprop, dense and sparse (``models.optim.rowwise``).
* ``models.training``: sizes and presets, the learning-rate search, the scaling sweep's points,
  the run loop, the train step, fine-tuning, layouts, checkpoints, the pretrained base model and
  GRPO's loss.
* ``models.reporting``: statistics over seeds, Markdown tables, plots, strict JSON results, and
  the learning-rate search's, SFT's and RL's reports.
* ``models.bench``: the benchmark programs and their helpers.
* ``models/results/``: every program's committed results, one folder per program (data, no code).
* ``models.cli``: the command-line kit every program uses.
"""
