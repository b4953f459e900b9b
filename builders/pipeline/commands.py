"""CLI verbs of the AI-feedback pipeline (being built under issue 3)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the pipeline verbs to the ``vlfeedback`` parser."""
