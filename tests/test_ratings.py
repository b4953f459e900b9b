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
