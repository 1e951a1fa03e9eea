"""experiments/compile_cost.py: its option parsing (the timing itself is a benchmark, run by hand)."""

from __future__ import annotations

import pytest

from experiments import compile_cost


def test_options_must_be_a_json_object():
  with pytest.raises(SystemExit, match=r"--options must be a JSON object, got '\[1\]'"):
    compile_cost.main(["--model=tiny", "--options=[1]"])
  with pytest.raises(ValueError):  # not JSON at all (json.JSONDecodeError is a ValueError)
    compile_cost.main(["--model=tiny", "--options={xla: 0}"])
