"""The one vocabulary of reasons (kompressor/reasons.py): every reason the code emits is a member."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from kompressor.messages import JobRef, Outcome, Result
from kompressor.reasons import Reason

ROOT = Path(__file__).resolve().parents[2]
# Where Result reasons are made: the worker, the messages, and the operator's dead letters and
# refusals. (Kubernetes condition and Event reasons, CamelCase, and a scaling decision's sentence
# are another vocabulary; the broker's x-death reasons are RabbitMQ's.)
SOURCES = sorted(
    [
        *(ROOT / "worker" / "kompressor_worker").rglob("*.py"),
        ROOT / "kompressor" / "messages.py",
        ROOT / "operator" / "kompressor_operator" / "engine.py",
        ROOT / "operator" / "kompressor_operator" / "ledger.py",
    ]
)
# Whatever is built with one of these carries a reason to a Result, the status or a metric: its
# first argument (the errors) or its `reason=`.
REASON_FIRST = {"CodecError", "FetchError", "StorageError", "TransientError", "MessageError"}
REASON_KEYWORD = {"Result", "_result", "_Retry"}


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _emitted(tree: ast.AST) -> list[ast.expr]:
    """Every expression given as a reason: to the constructors above, `reason=` anywhere, and the
    right-hand side of an assignment to a name `reason` (alone or in a tuple)."""
    found: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _name(node.func)
            if name in REASON_FIRST and node.args:
                found.append(node.args[0])
            found += [kw.value for kw in node.keywords if kw.arg == "reason"]
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id == "reason":
                    found.append(node.value)
                elif isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                    for element, value in zip(target.elts, node.value.elts, strict=False):
                        if isinstance(element, ast.Name) and element.id == "reason":
                            found.append(value)
    return found


def _reason_words(expression: ast.expr) -> list[str]:
    """The literal words an expression can give: a string constant, `Reason.x` as its member's
    value, through `a or b`, `a if c else b` and the default of `getattr(...)`/`.get(...)`."""
    if isinstance(expression, ast.Constant) and isinstance(expression.value, str):
        return [expression.value] if expression.value else []
    if isinstance(expression, ast.Attribute) and _name(expression.value) == "Reason":
        return [getattr(Reason, expression.attr, f"<no member {expression.attr}>")]
    if isinstance(expression, ast.BoolOp):
        return [word for value in expression.values for word in _reason_words(value)]
    if isinstance(expression, ast.IfExp):
        return _reason_words(expression.body) + _reason_words(expression.orelse)
    if isinstance(expression, ast.Call) and _name(expression.func) in ("getattr", "get"):
        default = 2 if _name(expression.func) == "getattr" else 1
        return _reason_words(expression.args[default]) if len(expression.args) > default else []
    return []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_reason_the_code_emits_is_a_member(path: Path):
    tree = ast.parse(path.read_text())
    for expression in _emitted(tree):
        for word in _reason_words(expression):
            assert word in set(Reason), f"{path.name}:{expression.lineno}: reason {word!r} is not a Reason"


def test_the_scan_finds_the_reasons_it_must():
    """Guards the scan itself: the codec, the fetch, the storage, the task and the consumer each
    give reasons through the constructors and assignments it reads."""
    seen: set[str] = set()
    for path in SOURCES:
        for expression in _emitted(ast.parse(path.read_text())):
            seen.update(_reason_words(expression))
    assert {Reason.decode_error, Reason.forbidden_address, Reason.source_missing, Reason.exists} <= seen
    assert {Reason.worker_crashed, Reason.internal_error, Reason.malformed_message} <= seen


def test_a_known_word_on_the_wire_is_a_member_and_an_unknown_one_is_kept():
    job = JobRef(namespace="n", name="j", uid="u")
    known = Result.decode(
        Result(job=job, id=0, outcome=Outcome.failed, source="s", reason="too_large").encode()
    )
    assert known.reason is Reason.too_large
    newer = Result(job=job, id=0, outcome=Outcome.failed, source="s", reason="a_newer_word")
    assert Result.decode(newer.encode()).reason == "a_newer_word"
    assert Result(job=job, id=0, outcome=Outcome.done, source="s").reason == ""
    assert b'"reason":"too_large"' in known.encode()


def test_every_member_is_its_own_word():
    assert all(member.value == member.name for member in Reason)
