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
from ember_optax._src.transform import ScaleByEmberState, scale_by_ember

__version__ = '0.1.0'

__all__ = (
  'BODY_LABEL',
  'ScaleByEmberState',
  'TABLE_LABEL',
  'TOKEN_TABLE_NAMES',
  'diagnostics',
  'ember',
  'ember_adamw',
  'ember_partition',
  'scale_by_ember',
  'state_shardings',
  'token_table_labels',
)
