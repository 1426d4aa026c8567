"""The plan's reason vocabulary: typed codes, strings on the wire, nothing outside it."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from imagegraph.reasons import IndexReason, Reason, ReasonCode

PKG = Path(__file__).resolve().parent.parent / "imagegraph"


def test_a_code_is_a_member_and_a_string_on_the_wire() -> None:
    r = Reason("target-moved", "s3 1: the object there was not written by imagegraph", {"target": "s3"})
    assert r.code is ReasonCode.TARGET_MOVED
    assert r == Reason(ReasonCode.TARGET_MOVED, r.message, {"target": "s3"})
    doc = json.loads(json.dumps(r.to_json()))
    assert doc == {"code": "target-moved", "message": r.message, "detail": {"target": "s3"}}
    assert Reason("index-due", "x").code is IndexReason.DUE


@pytest.mark.parametrize("code", ["registry-unreachable", "Forced", "", "forced "])
def test_a_code_outside_the_vocabulary_is_refused(code: str) -> None:
    with pytest.raises(ValueError, match="not a reason code"):
        Reason(code, "x")


def test_the_code_makes_reasons_from_members_only() -> None:
    """No `Reason("...")` with a string literal in the package: a typo fails at import, not in a
    user's `plan --json`."""
    literal = []
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "Reason"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                literal.append(f"{path.relative_to(PKG)}:{node.lineno}")
    assert not literal, literal
