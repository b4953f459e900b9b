"""Reading a 1–5 rating into an int: the release's rating strings, and the ratings in a judge's reply."""

from __future__ import annotations

import re

from vlfeedback_kit.builders.features import RATING_RANGE

MARKUP = re.compile(r"[*_`#>]+")
"""Markdown a judge wraps around its words (bold, code, headings, quotes); stripped before reading them."""
_INTEGRAL = re.compile(r"^\s*([+-]?\d+)(?:\.0*)?\s*$")
_LABELLED = re.compile(r"^(\d+)(?:\s*/\s*5)?(?![\d.,]\d)(?:\s*\(.*\))?\s*[.:]?(?:\s.*)?$")


def parse_rating(value: object, labelled: bool = False) -> int | None:
    """A rating as an int in 1–5, or None when it does not parse (the original training code skipped those).

    The release's strings are bare integers (``"4"``, ``"3.0"``); ``labelled`` reads a judge's rating, which may
    carry markup, a label or a scale (``"**5**"``, ``"4 (Helpful)"``, ``"4/5"``, ``"3 - moderately faithful"``)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        match = _LABELLED.match(MARKUP.sub("", value).strip()) if labelled else _INTEGRAL.match(value)
        value = int(match.group(1)) if match else None
    low, high = RATING_RANGE
    return value if isinstance(value, int) and low <= value <= high else None
