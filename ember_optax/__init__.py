"""Ember: a factored, first-moment-free optimizer for token tables, for Optax."""

from ember_optax import diagnostics
from ember_optax._src.alias import ember, ember_adamw, ember_partition
from ember_optax._src.routing import (
  BODY_LABEL,
  TABLE_LABEL,
  TOKEN_TABLE_NAMES,
  token_table_labels,
)
from ember_optax._src.sharding import state_shardings
from ember_optax._src.sparse import (
  IndexedRows,
  SparseEmberState,
  SparseRowTransformation,
  apply_row_updates,
  sparse_ember,
  sparse_ember_row_statistic,
  sum_duplicate_rows,
)
from ember_optax._src.transform import ScaleByEmberState, scale_by_ember

__version__ = '0.1.0'

__all__ = (
  'BODY_LABEL',
  'IndexedRows',
  'ScaleByEmberState',
  'SparseEmberState',
  'SparseRowTransformation',
  'TABLE_LABEL',
  'TOKEN_TABLE_NAMES',
  'apply_row_updates',
  'diagnostics',
  'ember',
  'ember_adamw',
  'ember_partition',
  'scale_by_ember',
  'sparse_ember',
  'sparse_ember_row_statistic',
  'state_shardings',
  'sum_duplicate_rows',
  'token_table_labels',
)
