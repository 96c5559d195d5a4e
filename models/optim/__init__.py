"""The optimizers of the comparisons: the registry of table optimizers and bodies, and row-wise
RMSprop, the peer that keeps one statistic per token."""
