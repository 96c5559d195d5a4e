"""The memory benchmark, ``python -m models.bench.memory`` (``run``), and its helpers."""
