"""The scaling benchmark, ``python -m models.bench.scaling`` (``run``), and its parts."""
