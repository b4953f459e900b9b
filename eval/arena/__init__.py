"""The Silkie-vs-base arena: one package, one module per job.

The Space (``spaces/silkie-vs-base/app.py``) is UI wiring only; everything it decides lives here, as plain
functions and small classes that tests call directly:

- ``config``: :class:`ArenaConfig` from ``ARENA_*`` environment variables (Space variables and secrets), and the
  two :class:`Contender` s (Silkie and its base);
- ``streaming``: :func:`stream_pair` streams both sides of one battle from **one** batched ``generate`` through
  :class:`PairStreamer` (the model is :mod:`vlfeedback_kit.serving`'s, loaded once);
- ``limits``: :class:`Limits` and :class:`VisitorLimiter` turn bad input and too many requests into one-line
  messages; rates are counted per gradio session and per client address, hashed in memory only;
- ``store``: :class:`VoteStore` appends one JSON line per vote and pushes the folder to a dataset repo, **private**
  unless ``public_votes``; :func:`privacy_notice` tells the visitor where votes go, before the first vote;
- ``votes``: reading votes back (:func:`read_votes`, :func:`is_votes_source`, :func:`vote_labels`): the public
  functions other parts of the kit (``vlfeedback agreement --human VOTES``) read votes through;
- ``board``: :func:`board`, the leaderboard (:mod:`vlfeedback_kit.eval.pairwise`), hidden below a minimum of votes;
- ``items``: :func:`votes_to_items`, the voted battles as items for ``vlfeedback annotate`` (``space-votes``);
- ``ui``: the gradio app (needs the ``[space]`` extra; not imported here);
- ``commands``: the ``vlfeedback space`` and ``space-votes`` verbs; ``publish``: ``vlfeedback publish space``;
- ``bench``: the battle latency benchmark (``python -m vlfeedback_kit.eval.arena.bench``).

The names below are re-exported, so ``from vlfeedback_kit.eval.arena import ArenaConfig, VoteStore, board`` works.
"""

from vlfeedback_kit.eval.arena.board import BOARD_HEADERS, Board, board
from vlfeedback_kit.eval.arena.config import VOTER_STORAGE_KEY, ArenaConfig, Contender, contenders
from vlfeedback_kit.eval.arena.items import votes_to_items
from vlfeedback_kit.eval.arena.limits import LimitError, Limits, RateLimiter, VisitorLimiter, client_address
from vlfeedback_kit.eval.arena.store import (
    DATASET_README,
    IDENTITY_WORDS,
    VOTES,
    VoteStore,
    image_sha256,
    kit_version,
    names_model,
    privacy_notice,
    token_available,
    vote_record,
)
from vlfeedback_kit.eval.arena.streaming import PairStreamer, stream_pair
from vlfeedback_kit.eval.arena.votes import HUMAN_PREFERENCE, is_votes_source, read_votes, vote_labels

__all__ = [
    "BOARD_HEADERS", "DATASET_README", "HUMAN_PREFERENCE", "IDENTITY_WORDS", "VOTER_STORAGE_KEY", "VOTES",
    "ArenaConfig", "Board", "Contender", "LimitError", "Limits", "PairStreamer", "RateLimiter", "VisitorLimiter",
    "VoteStore", "board", "client_address", "contenders", "image_sha256", "is_votes_source", "kit_version",
    "names_model", "privacy_notice", "read_votes", "stream_pair", "token_available", "vote_labels", "vote_record",
    "votes_to_items",
]  # fmt: skip
