"""What the programs write is strict JSON."""

import math

import pytest

from models.reporting import results


def test_undefined_numbers_are_written_as_null(tmp_path):
  path = tmp_path / 'out.json'
  results.write_json(path, {'std': math.nan, 'ci95': (1.0, math.inf), 'n': 1, 'name': 'x'})

  assert results.read_json(path) == {
    'std': None,
    'ci95': [1.0, None],
    'n': 1,
    'name': 'x',
  }


def test_a_value_json_cannot_hold_is_refused():
  with pytest.raises(TypeError):
    results.dumps({'value': object()})


def test_read_json_refuses_what_strict_json_cannot_say(tmp_path):
  path = tmp_path / 'loose.json'
  path.write_text('{"loss": NaN}')
  with pytest.raises(results.ConfigError, match=r'loose.json: not strict JSON \(NaN'):
    results.read_json(path)
  path.write_text('{"loss": ')
  with pytest.raises(results.ConfigError, match='not strict JSON'):
    results.read_json(path)
