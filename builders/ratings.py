"""Parsing the judge's rating strings of the original release into typed integers."""

from __future__ import annotations

import re

from vlfeedback_kit.builders.features import RATING_RANGE

_INTEGRAL = re.compile(r"^\s*([+-]?\d+)(?:\.0*)?\s*$")


def parse_rating(value: object) -> int | None:
    """A rating as an int in 1–5, or None when it does not parse (the original training code skipped those)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, float):
        if not value.is_integer():
            return None
        number = int(value)
    elif isinstance(value, str):
        match = _INTEGRAL.match(value)
        if match is None:
            return None
        number = int(match.group(1))
    else:
        return None
    low, high = RATING_RANGE
    return number if low <= number <= high else None
