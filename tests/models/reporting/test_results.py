"""What the programs write is strict JSON."""

import json
import math

import pytest

from models.reporting import results


def test_undefined_numbers_are_written_as_null(tmp_path):
  path = tmp_path / 'out.json'
  results.write_json(path, {'std': math.nan, 'ci95': (1.0, math.inf), 'n': 1, 'name': 'x'})

  def reject(constant):
    raise ValueError(constant)

  assert json.loads(path.read_text(), parse_constant=reject) == {
    'std': None,
    'ci95': [1.0, None],
    'n': 1,
    'name': 'x',
  }


def test_a_value_json_cannot_hold_is_refused():
  with pytest.raises(TypeError):
    results.dumps({'value': object()})
