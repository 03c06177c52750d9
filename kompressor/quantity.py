"""Kubernetes quantities ("500m", "2", "1Gi"): one grammar, for resource requests and byte sizes.

It must never import anything beyond the standard library.
"""

from __future__ import annotations

import re
from decimal import Decimal

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")
_SCALE = {
    None: Decimal(1),
    "m": Decimal("0.001"),
    **{s: Decimal(1000) ** (i + 1) for i, s in enumerate("kMGTPE")},
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
}
# A byte size is a whole number with at most a tera suffix (what spec.limits has always accepted).
_BYTE_SUFFIXES = frozenset({None, "k", "M", "G", "T", "Ki", "Mi", "Gi", "Ti"})


def parse_quantity(value: int | str) -> Decimal | None:
    """A Kubernetes quantity's value ("500m", "2", "1Gi", 2), or None when it is not one."""
    if isinstance(value, int):
        return Decimal(value) if value >= 0 else None
    match = _QUANTITY.match(value.strip())
    return Decimal(match[1]) * _SCALE[match[2]] if match else None


def parse_byte_quantity(value: int | str) -> int:
    """A byte quantity ("50Mi", "2G", "1048576", 1048576) as a number of bytes: a quantity with a
    whole-number mantissa and a suffix up to T or Ti."""
    if isinstance(value, int):
        return value
    match = _QUANTITY.match(value.strip())
    if match is None or not match[1].isdigit() or match[2] not in _BYTE_SUFFIXES:
        raise ValueError(f"{value!r} is not a byte quantity such as 52428800, 50Mi or 50M")
    return int(Decimal(match[1]) * _SCALE[match[2]])
