"""``python -m models.bench.memory``: the memory benchmark (``models.bench.memory.run``)."""

from models.bench.memory.run import main

main()
