"""The benchmarks (quality, step, memory), their helpers and their committed ``results/``."""
