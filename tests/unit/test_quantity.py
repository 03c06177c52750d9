"""One quantity grammar (kompressor/quantity.py) for resource requests and byte sizes."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kompressor.quantity import parse_byte_quantity, parse_quantity

SUFFIXES = ["", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "m"]


def _byte_quantity_before(value: int | str) -> int:
    """crd.parse_byte_quantity as it was before the two parsers became one: the oracle."""
    binary = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    decimal = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    if isinstance(value, int):
        return value
    text = value.strip()
    for suffixes in (binary, decimal):
        for suffix, factor in suffixes.items():
            if text.endswith(suffix) and text[: -len(suffix)].isdigit():
                return int(text[: -len(suffix)]) * factor
    if text.isdigit():
        return int(text)
    raise ValueError(value)


quantities = st.builds(
    lambda number, fraction, suffix, pad: f"{pad}{number}{fraction}{suffix}{pad}",
    st.integers(0, 10**6),
    st.sampled_from(["", ".", ".5", ".25"]),
    st.sampled_from([*SUFFIXES, "x", "mi", "KiB"]),
    st.sampled_from(["", " "]),
)


@given(quantities)
def test_byte_quantities_are_read_as_before(text: str):
    try:
        expected: int | None = _byte_quantity_before(text)
    except ValueError:
        expected = None
    if expected is None:
        with pytest.raises(ValueError, match="is not a byte quantity"):
            parse_byte_quantity(text)
    else:
        assert parse_byte_quantity(text) == expected


@given(st.integers(0, 10**6), st.sampled_from(["", "k", "M", "G", "T", "Ki", "Mi", "Gi", "Ti"]))
def test_a_byte_quantity_is_the_quantity_grammars_value(number: int, suffix: str):
    assert parse_byte_quantity(f"{number}{suffix}") == parse_quantity(f"{number}{suffix}")


def test_quantities_resources_use():
    assert parse_quantity("500m") == Decimal("0.5")
    assert parse_quantity("1Gi") == 2**30
    assert parse_quantity(2) == 2
    assert parse_quantity(-1) is None
    assert parse_quantity("1.5.2") is None
