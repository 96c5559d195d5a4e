"""The benchmarks and their committed ``results/``.

Quality, scaling, row steps, step time, memory, and the SFT task in Tunix's ``PeftTrainer`` against
our loop (``tunix_sft``).
"""
