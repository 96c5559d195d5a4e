"""Reference models and the Ember-vs-AdamW training comparison (the project's main job).

* ``models.gpt``: a decoder-only GPT in Flax NNX, with size presets (``tiny``, ``small``, ...).
* ``models.data``: the default corpus (the Python stdlib's source, no download), a locally trained
  byte-level BPE, the train/val split, batches; all cached on disk.
* ``models.train``: ``python -m models.train``, the comparison of optimizer setups.
* ``models.bench_quality``: the learning-rate-swept, multi-seed quality benchmark.
"""
