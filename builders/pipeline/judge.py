"""The judge, as pure functions: the rubric prompt, the request, reading and validating replies, order shuffling.

One request per instruction holds the image and every response (as the paper did). A template is the kit's rubric
style (``{instruction}``, ``{texts}``) or the original VLFeedback one (``[[instruction_placeholder]]``,
``[[text_1_placeholder]]`` …). A reply is read in either the kit's JSON format (``rubric.md``; found after prose,
in a fence, with a trailing comma) or the original sectioned format — per aspect a heading, per text an
``Output for Text k`` line, then ``Rating:`` and ``Rationale:`` lines — tolerating the usual noise (markdown bold
and bullets, code fences, extra whitespace, ``Rating: 4 (Helpful)``, ``Output for Text 1: Rating: 4`` on one line).
Validation is strict: every text × aspect present once, each rating an integer 1–5; otherwise the reply is
malformed and the problem is named, so it can be re-asked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from vlfeedback_kit.builders.features import ASPECTS, RATING_RANGE
from vlfeedback_kit.builders.ratings import MARKUP, parse_rating
from vlfeedback_kit.errors import UserError

TEMPLATE_FILE = Path(__file__).with_name("rubric.md")
REQUIRED_PLACEHOLDERS: tuple[str, ...] = ("instruction", "texts")
_PLACEHOLDER = re.compile(r"\{(instruction|texts|num_texts)\}")
_ORIGINAL_PLACEHOLDER = re.compile(r"\[\[(instruction|text_(\d+))_placeholder\]\]")
RESPONSE_FORMATS = ("text", "json-schema")
KEY_VERSION = 1
"""Bumped when the content key's recipe changes (old stores then simply miss)."""


@dataclass(frozen=True)
class Template:
    """A rubric prompt: ``{instruction}``, ``{texts}`` (and optionally ``{num_texts}``), or the original
    ``[[instruction_placeholder]]`` and ``[[text_k_placeholder]]`` for k = 1..``texts`` (then exactly that many)."""

    text: str
    sha256: str
    source: str
    texts: int | None = None

    def describe(self) -> str:
        """Where the template is, for the report and the dataset card (a user file by its name only)."""
        if self.source == "kit rubric":
            return f"the kit's rubric (builders/pipeline/{TEMPLATE_FILE.name})"
        return f"{Path(self.source).name} (a user template)"

    def fits(self, n: int) -> str | None:
        """Why an item with ``n`` responses cannot be put in this template (None when it can)."""
        if self.texts is not None and n != self.texts:
            return f"the template has {self.texts} text placeholders and the row {n} responses"
        return None


def load_template(path: Path | None = None) -> Template:
    """The kit's rubric, or a user's template file (e.g. the original one), checked for its placeholders."""
    template_path = path or TEMPLATE_FILE
    try:
        text = template_path.read_text(encoding="utf-8")
    except OSError as err:
        raise UserError(f"--template {template_path}: cannot read it ({err})") from err
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    source = "kit rubric" if path is None else str(template_path)
    original = {match.group(1) for match in _ORIGINAL_PLACEHOLDER.finditer(text)}
    if original:
        numbers = sorted(int(name[5:]) for name in original if name.startswith("text_"))
        if "instruction" not in original or not numbers or numbers != list(range(1, len(numbers) + 1)):
            raise UserError(
                f"--template {template_path}: the original placeholders need [[instruction_placeholder]] and "
                f"[[text_1_placeholder]] .. [[text_N_placeholder]] without gaps (found {', '.join(sorted(original))})"
            )
        return Template(text, sha, source, texts=len(numbers))
    found = set(_PLACEHOLDER.findall(text))
    missing = [name for name in REQUIRED_PLACEHOLDERS if name not in found]
    if missing:
        names = ", ".join("{" + name + "}" for name in missing)
        raise UserError(
            f"--template {template_path} lacks the placeholder(s) {names} (or the original "
            "[[instruction_placeholder]], [[text_1_placeholder]] ..); the kit fills them in"
        )
    return Template(text, sha, source)


def render_texts(responses: list[str]) -> str:
    """The responses as numbered ``<text k>`` blocks, in the order shown to the judge."""
    return "\n\n".join(f"<text {k}>\n{response}\n</text {k}>" for k, response in enumerate(responses, start=1))


def render_prompt(template: Template, instruction: str, responses: list[str]) -> str:
    """The judge prompt: placeholders filled in one pass, so braces inside the inserted text stay as they are."""
    if template.texts is not None:
        problem = template.fits(len(responses))
        if problem:
            raise ValueError(problem)
        values = {"instruction": instruction, **{f"text_{k}": r for k, r in enumerate(responses, start=1)}}
        return _ORIGINAL_PLACEHOLDER.sub(lambda match: values[match.group(1)], template.text)
    values = {"instruction": instruction, "texts": render_texts(responses), "num_texts": str(len(responses))}
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template.text)


def response_schema(n: int) -> dict:
    """The rubric's reply as an OpenAI ``response_format`` JSON schema (vLLM and SGLang guide decoding by it)."""
    entry = {
        "type": "object",
        "properties": {
            "text": {"type": "integer", "enum": list(range(1, n + 1))},
            "rationale": {"type": "string"},
            "rating": {"type": "integer", "enum": list(range(RATING_RANGE[0], RATING_RANGE[1] + 1))},
        },
        "required": ["text", "rationale", "rating"],
        "additionalProperties": False,
    }
    schema = {
        "type": "object",
        "properties": {aspect: {"type": "array", "items": entry} for aspect in ASPECTS},
        "required": list(ASPECTS),
        "additionalProperties": False,
    }
    return {"type": "json_schema", "json_schema": {"name": "vlfeedback_ratings", "strict": True, "schema": schema}}


@dataclass(frozen=True)
class JudgeSettings:
    """Everything besides the item that changes what the judge is asked; part of every item's content key."""

    model: str
    template_sha256: str
    shuffle_seed: int | None = None
    temperature: float = 0.0
    max_tokens: int = 2048
    image_detail: str = "high"
    response_format: str = "text"
    seed: int | None = None

    def to_dict(self) -> dict:
        """The settings as a JSON-able dict (recorded in the store and the report); the later fields only when
        set, so stores made before they existed keep their keys."""
        data = asdict(self)
        for name, default in (("response_format", "text"), ("seed", None)):
            if data[name] == default:
                del data[name]
        return data


def item_key(image_sha256: str, prompt: str, responses: list[str], settings: JudgeSettings) -> str:
    """The content hash that identifies one judge item: image, prompt, responses, template, judge and settings."""
    blob = json.dumps(
        {"v": KEY_VERSION, "image": image_sha256, "prompt": prompt, "responses": responses, **settings.to_dict()},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def parse_shard(text: str) -> tuple[int, int]:
    """``i/N`` → (i, N), with 0 ≤ i < N."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError as err:
        raise UserError(f"--shard {text!r}: expected i/N, e.g. 0/4") from err
    if not 0 <= index < count:
        raise UserError(f"--shard {text!r}: need 0 <= i < N")
    return index, count


def shard_of(key: str, shards: int) -> int:
    """The shard an item belongs to: a function of its content key only, so every machine agrees."""
    return int(key[:16], 16) % shards


def permutation(n: int, seed: int | None, key: str) -> list[int]:
    """The order the judge sees: ``shown[j] = responses[perm[j]]``; identity without a seed, else seeded per item."""
    order = list(range(n))
    if seed is not None:
        random.Random(f"{seed}:{key}").shuffle(order)
    return order


def image_data_url(image: bytes) -> str:
    """A ``data:`` URL for the image bytes, with the MIME type read from the magic number."""
    if image.startswith(b"\x89PNG"):
        mime = "image/png"
    elif image[:6] in (b"GIF87a", b"GIF89a"):
        mime = "image/gif"
    elif image[:4] == b"RIFF" and image[8:12] == b"WEBP":
        mime = "image/webp"
    else:
        mime = "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(image).decode('ascii')}"


def first_message(prompt: str, image_url: str, detail: str) -> dict:
    """The user message of an item: the rubric prompt and the image."""
    return {
        "role": "user",
        "content": [
            {"type": "text", "text": prompt},
            {"type": "image_url", "image_url": {"url": image_url, "detail": detail}},
        ],
    }


def reask_message(problem: str, n: int) -> dict:
    """The follow-up after a malformed reply: what was wrong and what a complete reply holds."""
    return {
        "role": "user",
        "content": (
            f"Your reply could not be read: {problem}. Reply again with the complete assessment: all {n} texts "
            f"on each of {', '.join(ASPECTS)}, every rating an integer from 1 to 5, in exactly the format asked for."
        ),
    }


@dataclass(frozen=True)
class Reply:
    """What came back from one judge call."""

    content: str | None
    refusal: str | None = None
    finish_reason: str | None = None


def conversation(first: dict, previous: list[tuple[Reply, str]], n: int) -> list[dict]:
    """The messages of the next attempt: the item, then each earlier (malformed) reply and its correction."""
    messages = [first]
    for reply, problem in previous:
        messages += [{"role": "assistant", "content": reply.content or ""}, reask_message(problem, n)]
    return messages


# --- reading replies --------------------------------------------------------------------------------------------

_ASPECT_KEYS = {re.sub(r"[^a-z]", "", aspect.lower()): aspect for aspect in ASPECTS}
_HEADING = re.compile(
    r"^(?:\d+[.)]\s*)?(helpfulness|visual faithfulness|ethical considerations)"
    r"(?:\s+(?:assessment|evaluation|ratings?))?(?:\s*\(.*\))?\s*:?$",
    re.IGNORECASE,
)
_TEXT_LINE = re.compile(r"^(?:output\s+for\s+)?text\s*(\d+)\s*(?:[:.\-–]\s*(.*))?$", re.IGNORECASE)
_FIELD = re.compile(r"^(rating|rationale)\s*[:：-]\s*(.*)$", re.IGNORECASE)
_BULLET = re.compile(r"^[-–•+]\s*")
_RATIONALE_SPLIT = re.compile(r"[,;|]?\s*(?=\brationale\s*[:：-])", re.IGNORECASE)
_TRAILING_COMMA = re.compile(r",(\s*[}\]])")
_JSON_ANSWER = re.compile(r'\{\s*"(?:helpfulness|visual[ _]faithfulness|ethical[ _]considerations)"', re.IGNORECASE)
_REFUSAL = re.compile(
    r"\b(?:i['’]?m sorry|i am sorry|i apologi[sz]e|i (?:can(?:no|['’])t|won['’]t|will not) (?:help|assist|comply|"
    r"provide|evaluate|rate|do that|fulfil)|i(?:['’]m| am) (?:unable|not able) to|cannot (?:help|assist) with)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Entry:
    """One rating the reply gave: which text (as shown), which aspect, the raw rating, the rationale."""

    text: int
    aspect: str
    rating: object
    rationale: str


def aspect_of(name: str) -> str | None:
    """The canonical aspect for a spelling such as ``visual_faithfulness`` or ``Ethical Considerations``."""
    return _ASPECT_KEYS.get(re.sub(r"[^a-z]", "", name.lower()))


def _decode_object(text: str) -> tuple[object, str | None]:
    """The JSON value at the start of ``text`` (what follows it is ignored), forgiving trailing commas; or the
    parse error."""
    decoder = json.JSONDecoder()
    try:
        return decoder.raw_decode(text)[0], None
    except json.JSONDecodeError as err:
        try:
            return decoder.raw_decode(_TRAILING_COMMA.sub(r"\1", text))[0], None
        except json.JSONDecodeError:
            return None, f"{err.msg} at line {err.lineno} column {err.colno}"


def _json_entries(text: str) -> tuple[list[Entry] | None, str | None]:
    """Entries of a JSON reply (fenced, bare, or after prose that has braces of its own), or None and — when the
    reply holds an answer object that does not parse — why."""
    for start in (index for index, char in enumerate(text) if char == "{"):
        data, _ = _decode_object(text[start:])
        if isinstance(data, dict) and any(aspect_of(k) for k in data):
            return list(_entries_of_json(data)), None
    answer = _JSON_ANSWER.search(text)
    return None, _decode_object(text[answer.start() :])[1] if answer else None


def _entries_of_json(data: dict):
    for name, items in data.items():
        aspect = aspect_of(name)
        if aspect is None:
            continue
        if isinstance(items, dict):
            items = [{"text": number, **(value if isinstance(value, dict) else {})} for number, value in items.items()]
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, dict):
                continue
            number = re.sub(r"\D", "", str(item.get("text", "")))
            rationale = item.get("rationale", item.get("Rationale", ""))
            yield Entry(
                int(number) if number else 0,
                aspect,
                item.get("rating", item.get("Rating")),
                rationale.strip() if isinstance(rationale, str) else "",
            )


def _sectioned_entries(text: str) -> list[Entry]:
    """Entries of a reply in the original sectioned format (headings, ``Output for Text k``, Rating/Rationale)."""
    entries: list[Entry] = []
    aspect: str | None = None
    number: int | None = None
    rating: object = None
    rationale: list[str] | None = None

    def flush() -> None:
        nonlocal rating, rationale
        if aspect and number is not None and (rating is not None or rationale is not None):
            entries.append(Entry(number, aspect, rating, " ".join(rationale or []).strip()))
        rating, rationale = None, None

    for raw_line in text.splitlines():
        line = _BULLET.sub("", " ".join(MARKUP.sub("", raw_line).split()))
        if not line:
            continue
        heading, text_line = _HEADING.match(line), _TEXT_LINE.match(line)
        rest = text_line.group(2) if text_line else None
        if text_line and rest and not _FIELD.match(rest):
            text_line = None
        if heading:
            flush()
            aspect, number = aspect_of(heading.group(1)), None
            continue
        if text_line:
            flush()
            number = int(text_line.group(1))
            if not rest:
                continue
            line = rest
        pieces = _RATIONALE_SPLIT.split(line) if _FIELD.match(line) else [line]
        for piece in filter(None, pieces):
            field = _FIELD.match(piece)
            if field and field.group(1).lower() == "rating":
                if rating is not None:
                    flush()
                rating = field.group(2)
            elif field:
                rationale = [field.group(2)]
            elif rationale is not None:
                rationale.append(piece)
    flush()
    return entries


def parse_reply(text: str) -> list[Entry]:
    """Every rating found in a reply, in the kit's JSON format or the original sectioned one."""
    return read_entries(text)[0]


def read_entries(text: str) -> tuple[list[Entry], str | None]:
    """Every rating found in a reply, and the JSON parse error when the reply's answer object does not parse."""
    entries, json_error = _json_entries(text)
    if entries:
        return entries, None
    entries = _sectioned_entries(text)
    return entries, None if entries else json_error


def validate(entries: list[Entry], n: int) -> tuple[list[dict[str, tuple[int, str]]] | None, str | None]:
    """Per shown text, aspect → (rating, rationale); or None and the problems, named for the re-ask."""
    found: dict[tuple[int, str], list[Entry]] = {}
    problems = []
    for entry in entries:
        if not 1 <= entry.text <= n:
            problems.append(f"there is no Text {entry.text} (texts are numbered 1 to {n})")
            continue
        found.setdefault((entry.text, entry.aspect), []).append(entry)
    ratings: list[dict[str, tuple[int, str]]] = [{} for _ in range(n)]
    for number in range(1, n + 1):
        for aspect in ASPECTS:
            given = found.get((number, aspect), [])
            values = {parse_rating(e.rating, labelled=True) for e in given}
            if not given:
                problems.append(f"Text {number} has no {aspect} rating")
            elif None in values:
                bad = next(e.rating for e in given if parse_rating(e.rating, labelled=True) is None)
                problems.append(f"Text {number} {aspect} rating {bad!r} is not an integer from 1 to 5")
            elif len(values) > 1:
                problems.append(f"Text {number} has conflicting {aspect} ratings {sorted(values)}")
            else:
                ratings[number - 1][aspect] = (values.pop(), given[0].rationale)
    if problems:
        return None, "; ".join(dict.fromkeys(problems))
    return ratings, None


@dataclass(frozen=True)
class Verdict:
    """How one reply reads: ``ok`` with ratings per shown text, ``malformed`` with the problem, or ``refused``."""

    outcome: str
    ratings: list[dict[str, tuple[int, str]]] | None = None
    problem: str | None = None


def read_reply(reply: Reply, n: int) -> Verdict:
    """Classify a judge reply for ``n`` texts; a refusal is a labelled outcome, anything unreadable is malformed."""
    if reply.refusal:
        return Verdict("refused", problem=f"refused: {reply.refusal}")
    if reply.finish_reason == "content_filter":
        return Verdict("refused", problem="refused: the reply was stopped by the content filter")
    content = reply.content or ""
    if not content.strip():
        return Verdict("malformed", problem="the reply is empty")
    entries, json_error = read_entries(content)
    if json_error:
        return Verdict("malformed", problem=f"the JSON object in it does not parse ({json_error})")
    if not entries and _REFUSAL.search(content[:400]):
        return Verdict("refused", problem=f"refused: {content.strip()[:200]}")
    ratings, problem = validate(entries, n)
    if ratings is None:
        if reply.finish_reason == "length":
            problem = f"the reply was cut off at the token limit ({problem})"
        return Verdict("malformed", problem=problem or "no ratings found")
    return Verdict("ok", ratings=ratings)


def unshuffle(ratings: list[dict[str, tuple[int, str]]], order: list[int]) -> list[dict[str, tuple[int, str]]]:
    """Ratings per shown text mapped back to the original response order (``shown[j] = original[order[j]]``)."""
    original: list[dict[str, tuple[int, str]]] = [{} for _ in order]
    for shown, index in enumerate(order):
        original[index] = ratings[shown]
    return original


def release_annotations(ratings: dict[str, tuple[int, str]]) -> dict[str, dict[str, str]]:
    """One response's ratings in the release layout: ``{aspect: {"Rating": "4", "Rationale": "..."}}``."""
    return {aspect: {"Rating": str(ratings[aspect][0]), "Rationale": ratings[aspect][1]} for aspect in ASPECTS}
