"""The flow's modules keep the shape issue 13 gave them: no function over ~60 lines, so that
each stage reads as a few named steps (../shared/STYLE.md). The CLI's argument table and the
operator's flag parsing are not stages of the flow and are left out."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CONTROLLER = Path(__file__).resolve().parents[2] / "controller"
FLOW = ("model.py", "source.py", "render.py", "plan.py", "diff.py", "traps.py", "sync.py", "operation.py",
        "reconcile.py", "status.py", "health")
LONGEST = 60


def _modules() -> list[Path]:
    paths = []
    for name in FLOW:
        path = CONTROLLER / name
        paths += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return paths


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(CONTROLLER)))
def test_no_function_of_the_flow_is_longer_than_60_lines(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines, from line {node.lineno})"
            for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > LONGEST]
    assert not long, f"split these into named steps: {', '.join(long)}"
