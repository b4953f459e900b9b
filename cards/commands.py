"""CLI verbs of cards and publishing (being built under issue 5)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the card and publish verbs to the ``vlfeedback`` parser."""
