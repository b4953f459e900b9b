"""Rating strings of the original release → typed ints or null."""

import pytest

from vlfeedback_kit.builders.features import source_of
from vlfeedback_kit.builders.ratings import parse_rating


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("4", 4),
        (" 5 ", 5),
        ("1", 1),
        ("3.0", 3),
        (2, 2),
        (4.0, 4),
        ("0", None),
        ("6", None),
        ("4.5", None),
        ("N/A", None),
        ("", None),
        ("four", None),
        (None, None),
        (True, None),
        ([4], None),
        (3.5, None),
    ],
)
def test_parse_rating(value, expected):
    assert parse_rating(value) == expected


@pytest.mark.parametrize("value", ["4 (Helpful)", "**5**", "4/5", "3 - moderately faithful"])
def test_a_release_rating_is_a_bare_integer(value):
    """The release's strings are read strictly: what a judge's reply may say around a rating is not a release value."""
    assert parse_rating(value) is None and parse_rating(value, labelled=True) is not None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (4, 4),
        ("4", 4),
        ("4 (Helpful)", 4),
        ("**5**", 5),
        ("4/5", 4),
        (4.0, 4),
        ("3 - moderately faithful", 3),
        ("4.5", None),
        (4.5, None),
        ("0", None),
        ("6", None),
        ("10/10", None),
        ("N/A", None),
        ("", None),
        (True, None),
        (None, None),
    ],
)
def test_a_judges_rating_may_carry_markup_a_label_or_a_scale(value: object, expected: int | None) -> None:
    """The one parser reads a judge's rating (``labelled``) as the pipeline's validation needs it."""
    assert parse_rating(value, labelled=True) == expected


@pytest.mark.parametrize(
    ("row_id", "source"),
    [
        ("svit-conversation-1219", "SVIT"),
        ("llava-detail-3", "LLaVA"),
        ("llava-med-12", "LLaVA-Med"),
        ("llavar-7", "LLaVAR"),
        ("LRV-5", "LRV"),
        ("pmc-vqa-4", "PMC-VQA"),
        ("pca-eval-1", "PCA-EVAL"),
        ("m3it-9", "M3IT"),
        ("rtvlm-2", "RTVLM"),
        ("newsource-1", "newsource"),
    ],
)
def test_source_from_id_prefix(row_id, source):
    assert source_of(row_id) == source
