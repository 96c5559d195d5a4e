"""``python -m models.bench.scaling``: the scaling benchmark (``models.bench.scaling.run``)."""

from models.bench.scaling.run import main

main()
