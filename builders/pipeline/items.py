"""Judge items: which rows of a stage's input are judged, under which content key, and what a finished item records.

``plan`` scans the input once (decoding and hashing each image, keeping no image in memory: one that does not decode
in full is an invalid row, never sent to the judge) into the list of items of this shard; ``load`` reads one item's
row and image back when it is judged; ``settle`` turns the calls of an item's current round into its final result —
or None while another attempt is due.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

from vlfeedback_kit.builders.pipeline.endpoint import Completion
from vlfeedback_kit.builders.pipeline.judge import (
    JudgeSettings,
    Template,
    Verdict,
    conversation,
    first_message,
    image_data_url,
    item_key,
    permutation,
    read_reply,
    release_annotations,
    render_prompt,
    response_schema,
    shard_of,
    unshuffle,
)
from vlfeedback_kit.builders.pipeline.layout import StageInput


@dataclass(frozen=True, slots=True)
class Planned:
    """One item to judge: where its row is, its id and content key, how many responses; sizes for estimates."""

    line: int
    offset: int
    item_id: str
    key: str
    n: int
    prompt_chars: int = 0
    image_size: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class Item:
    """An item read back for judging: the input row, its prompt and responses, and the image bytes."""

    planned: Planned
    row: dict
    prompt: str
    responses: list[str]
    image: bytes


@dataclass
class Plan:
    """The items of one shard in input order, the rows that cannot be judged, and the rows of other shards."""

    items: list[Planned]
    invalid: list[dict]
    other_shard: int
    rows: int

    def unique(self) -> list[Planned]:
        """The items with distinct keys (identical content is judged once and filled in everywhere)."""
        seen: set[str] = set()
        return [p for p in self.items if not (p.key in seen or seen.add(p.key))]


def input_problem(row: dict) -> str | None:
    """Why a row cannot be judged (None when it can): it needs a prompt and completions with a model and a response."""
    if not isinstance(row.get("prompt"), str):
        return "'prompt' is missing or not a string"
    completions = row.get("completions")
    if not isinstance(completions, list) or not completions:
        return "'completions' is missing or empty: decode the instructions first"
    for k, completion in enumerate(completions):
        if not isinstance(completion, dict) or not isinstance(completion.get("response"), str):
            return f"completions[{k}] has no 'response' string"
        if not isinstance(completion.get("model"), str):
            return f"completions[{k}] has no 'model' string"
    return None


def plan(
    folder: StageInput,
    settings: JudgeSettings,
    template: Template | None,
    shard: tuple[int, int] | None = None,
    sizes: bool = False,
) -> Plan:
    """Scan the input into the items of ``shard`` (None: all); ``sizes`` also measures prompts and images (and
    needs the template). Rows whose response count the template cannot show (the original one has a fixed
    number of text placeholders) are invalid."""
    items: list[Planned] = []
    invalid: list[dict] = []
    other_shard = rows = 0
    for line in folder.lines():
        rows += 1
        row = line.row
        image, problem = folder.usable(line, None if line.error else input_problem(row))
        if problem is not None:
            invalid.append(line.invalid(problem))
            continue
        responses = [c["response"] for c in row["completions"]]
        unfit = template.fits(len(responses)) if template is not None else None
        if unfit:
            invalid.append(line.invalid(("template_texts", unfit)))
            continue
        key = item_key(hashlib.sha256(image).hexdigest(), row["prompt"], responses, settings)
        if shard is not None and shard_of(key, shard[1]) != shard[0]:
            other_shard += 1
            continue
        measured = _measure(template, row["prompt"], responses, image) if sizes else {}
        items.append(Planned(line.number, line.offset, row["id"], key, len(responses), **measured))
    return Plan(items, invalid, other_shard, rows)


def _measure(template: Template, prompt: str, responses: list[str], image: bytes) -> dict:
    from PIL import Image

    with Image.open(io.BytesIO(image)) as opened:
        size = opened.size
    return {"prompt_chars": len(render_prompt(template, prompt, responses)), "image_size": size}


def load(folder: StageInput, planned: Planned) -> Item:
    """Read a planned item's row and image back."""
    row = folder.row(planned.offset)
    responses = [c["response"] for c in row["completions"]]
    return Item(planned, row, row["prompt"], responses, folder.image_bytes(row))


def build_request(
    item: Item, settings: JudgeSettings, template: Template, previous: list[Completion]
) -> tuple[dict, list[int]]:
    """The chat request of an item's next attempt (earlier malformed replies and their corrections included)."""
    n = item.planned.n
    order = permutation(n, settings.shuffle_seed, item.planned.key)
    prompt = render_prompt(template, item.prompt, [item.responses[i] for i in order])
    first = first_message(prompt, image_data_url(item.image), settings.image_detail)
    history = [(c.reply, read_reply(c.reply, n).problem) for c in previous]
    request = {
        "model": settings.model,
        "messages": conversation(first, history, n),
        "temperature": settings.temperature,
        "max_tokens": settings.max_tokens,
    }
    if settings.seed is not None:
        request["seed"] = settings.seed
    if settings.response_format == "json-schema":
        request["response_format"] = response_schema(n)
    return request, order


def settle(
    verdict: Verdict, order: list[int], calls: list[tuple[Completion, float | None]], max_attempts: int
) -> tuple[str, dict] | None:
    """The item's (outcome, result) after the calls of its current round, or None when it should be re-asked."""
    if verdict.outcome == "malformed" and len(calls) < max_attempts:
        return None
    last = calls[-1][0].reply
    costs = [cost for _, cost in calls]
    result = {
        "attempts": len(calls),
        "permutation": order,
        "raw_reply": last.content if last.content is not None else last.refusal,
        "usage": {
            "prompt_tokens": sum(c.prompt_tokens for c, _ in calls),
            "completion_tokens": sum(c.completion_tokens for c, _ in calls),
        },
        "cost_usd": None if None in costs else sum(costs),
    }
    if verdict.outcome == "ok":
        return "ok", {**result, "annotations": [release_annotations(r) for r in unshuffle(verdict.ratings, order)]}
    if verdict.outcome == "refused":
        return "refused", {**result, "reason": verdict.problem}
    return "failed", {**result, "reason": verdict.problem, "replies": [c.reply.content for c, _ in calls]}
