"""JSON is written strictly: NaN and infinity (which JSON lacks, and Python would write as ``NaN``)
are an error naming the file and the value, and nothing is written."""

from __future__ import annotations

import ast
import json
import math

import pytest

from tests.conftest import REPO_ROOT
from untils.atomic import json_text, write_json_atomic


@pytest.mark.parametrize(
    "bad, place",
    [
        (math.nan, "['metrics']['srcc'] = nan"),
        (math.inf, "['metrics']['srcc'] = inf"),
        (-math.inf, "['metrics']['srcc'] = -inf"),
    ],
)
def test_non_finite_value_is_refused_naming_file_and_place(bad, place, tmp_path):
    path = tmp_path / "report.json"
    path.write_text('{"kept": true}')
    content = {"images": [1, 2], "metrics": {"acc5": 0.5, "srcc": bad}}
    with pytest.raises(ValueError) as refused:
        write_json_atomic(path, content)
    assert str(refused.value) == f"{path}: {place} is not a finite number, which JSON cannot hold: not written"
    assert path.read_text() == '{"kept": true}' and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_value_in_a_list_is_placed_by_index():
    with pytest.raises(ValueError, match=r"boxes.json: \['a.jpg'\]\[1\]\[2\] = nan is not a finite number"):
        json_text({"a.jpg": [[0, 0, 1, 1], [0, 0, math.nan, 1]]}, "boxes.json")


def test_finite_content_reads_back_equal(tmp_path):
    content = {"name": "x", "scores": [0.1, -2.5e-300, 1.7976931348623157e308], "nested": {"n": None, "ok": True}}
    path = tmp_path / "out.json"
    write_json_atomic(path, content, indent=1)
    assert json.loads(path.read_text()) == content
    assert path.read_text() == json.dumps(content, indent=1)


def _json_writes(path) -> list[int]:
    """Lines of ``path`` that call json.dump or json.dumps."""
    tree = ast.parse(path.read_text())
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("dump", "dumps")
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "json"
    ]


def test_every_json_writer_goes_through_the_strict_one():
    sources = [path for pattern in ("*.py", "untils/*.py", "benchmarks/*.py") for path in REPO_ROOT.glob(pattern)]
    direct = {str(path.relative_to(REPO_ROOT)): _json_writes(path) for path in sources}
    direct = {name: lines for name, lines in direct.items() if lines}
    assert set(direct) == {"untils/atomic.py"}, direct
    assert len(direct["untils/atomic.py"]) == 1  # json_text's
