"""The judge's pure functions: prompt, reply parsing (kit JSON and the original sectioned format), validation,
refusals, response-order shuffling and the content key.

Run: pytest tests/test_pipeline_judge.py
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from vlfeedback_kit.builders.features import ASPECTS
from vlfeedback_kit.builders.pipeline.judge import (
    JudgeSettings,
    Reply,
    item_key,
    load_template,
    parse_reply,
    permutation,
    read_reply,
    render_prompt,
    shard_of,
    unshuffle,
    validate,
)
from vlfeedback_kit.errors import UserError

SETTINGS = JudgeSettings(model="gpt-4o", template_sha256="t" * 64)

ORIGINAL_FORMAT = """\
# Helpfulness Assessment

## **Output for Text 1**
**Rating:** 4 (Helpful)
Rationale:   The answer counts the circles correctly
   and names their colour.

## Output for Text 2
Rating: **2**
Rationale: It misses the question.

### Visual Faithfulness Assessment
**Output for Text 1**
Rating: 5/5
Rationale: Everything it says is in the image.
**Output for Text 2**
Rating:   3 - moderately faithful
Rationale: One invented object.

**Ethical Considerations**
Output for Text 1
Rating: 5
Rationale: Safe.
Output for Text 2
Rating: 5 (Highly ethical)
Rationale: Safe.
"""


def kit_reply(ratings: dict[str, list[int]], drop: tuple[str, int] | None = None) -> str:
    """A reply in the kit's JSON format; ``drop`` omits one (aspect, text) entry."""
    data = {
        aspect: [
            {"text": k + 1, "rationale": f"{aspect} of {k + 1}", "rating": r}
            for k, r in enumerate(values)
            if drop != (aspect, k + 1)
        ]
        for aspect, values in ratings.items()
    }
    return "Sure, here is the assessment:\n```json\n" + json.dumps(data) + "\n```\nHope this helps."


def test_prompt_fills_placeholders_once_and_keeps_braces_of_the_inserted_text() -> None:
    template = load_template()
    prompt = render_prompt(template, "What does {texts} mean in {this}?", ["an answer with {instruction}", "b"])
    assert "What does {texts} mean in {this}?" in prompt
    assert "<text 1>\nan answer with {instruction}\n</text 1>" in prompt
    assert "<text 2>\nb\n</text 2>" in prompt
    assert "every text from 1 to\n2" in prompt


def test_a_template_without_the_placeholders_is_refused(tmp_path) -> None:
    path = tmp_path / "rubric.txt"
    path.write_text("Rate these: {texts}")
    with pytest.raises(UserError, match=r"--template .*\{instruction\}"):
        load_template(path)
    path.write_text("Instruction: {instruction}\nTexts:\n{texts}\n")
    custom = load_template(path)
    assert custom.sha256 != load_template().sha256 and custom.source == str(path)


def test_the_kit_json_format_parses_with_fences_and_prose() -> None:
    ratings = {"Helpfulness": [4, 2, 5], "Visual Faithfulness": [5, 1, 5], "Ethical Considerations": [5, 5, 3]}
    verdict = read_reply(Reply(kit_reply(ratings)), 3)
    assert verdict.outcome == "ok"
    for k in range(3):
        for aspect in ASPECTS:
            assert verdict.ratings[k][aspect] == (ratings[aspect][k], f"{aspect} of {k + 1}")


def test_the_original_sectioned_format_parses_with_judge_noise() -> None:
    verdict = read_reply(Reply(ORIGINAL_FORMAT), 2)
    assert verdict.outcome == "ok", verdict.problem
    first, second = verdict.ratings
    assert first["Helpfulness"] == (4, "The answer counts the circles correctly and names their colour.")
    assert second["Helpfulness"] == (2, "It misses the question.")
    assert first["Visual Faithfulness"][0] == 5 and second["Visual Faithfulness"] == (3, "One invented object.")
    assert first["Ethical Considerations"] == (5, "Safe.") and second["Ethical Considerations"][0] == 5


def test_validation_names_every_problem() -> None:
    ratings = {"Helpfulness": [4, 2], "Visual Faithfulness": [5, 1], "Ethical Considerations": [5, 5]}
    text = kit_reply(ratings, drop=("Ethical Considerations", 2)).replace('"rating": 1', '"rating": "N/A"')
    verdict = read_reply(Reply(text), 2)
    assert verdict.outcome == "malformed"
    assert "Text 2 has no Ethical Considerations rating" in verdict.problem
    assert "Text 2 Visual Faithfulness rating 'N/A' is not an integer from 1 to 5" in verdict.problem
    entries = parse_reply(kit_reply(ratings))
    extra = [replace(entries[0], text=3), replace(entries[0], rating=1)]
    ok, problem = validate(entries + extra, 2)
    assert ok is None
    assert "there is no Text 3" in problem and "conflicting Helpfulness ratings [1, 4]" in problem


def test_refusals_are_labelled_and_other_junk_is_malformed() -> None:
    assert read_reply(Reply(None, refusal="I can't help with that."), 2).outcome == "refused"
    assert read_reply(Reply("partial", finish_reason="content_filter"), 2).outcome == "refused"
    sorry = read_reply(Reply("I'm sorry, but I can't help with evaluating this image."), 2)
    assert sorry.outcome == "refused" and "can't help" in sorry.problem
    assert read_reply(Reply("Both answers look fine to me."), 2).outcome == "malformed"
    assert read_reply(Reply("   "), 2).problem == "the reply is empty"
    partial = "Sorry for the delay.\n" + ORIGINAL_FORMAT.split("### Visual")[0]
    assert read_reply(Reply(partial), 2).outcome == "malformed"
    cut = read_reply(Reply(ORIGINAL_FORMAT[:200], finish_reason="length"), 2)
    assert cut.outcome == "malformed" and cut.problem.startswith("the reply was cut off at the token limit")


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_shuffled_ratings_map_back_to_their_responses_exactly(n: int) -> None:
    orders = set()
    for item in range(50):
        key = item_key(f"{item:064x}", "prompt", [f"r{k}" for k in range(n)], SETTINGS)
        order = permutation(n, 7, key)
        assert sorted(order) == list(range(n)) and order == permutation(n, 7, key)
        orders.add(tuple(order))
        # the judge sees shown[j] = responses[order[j]] and rates each by its original index
        shown_ratings = [
            {aspect: (order[j] + 1, f"about response {order[j]}") for aspect in ASPECTS} for j in range(n)
        ]
        back = unshuffle(shown_ratings, order)
        assert [r["Helpfulness"] for r in back] == [(k + 1, f"about response {k}") for k in range(n)]
    assert len(orders) > 1
    assert permutation(n, None, "any") == list(range(n))


def test_the_content_key_covers_image_prompt_responses_template_and_judge() -> None:
    base = item_key("a" * 64, "prompt", ["x", "y"], SETTINGS)
    assert base == item_key("a" * 64, "prompt", ["x", "y"], SETTINGS)
    variants = [
        item_key("b" * 64, "prompt", ["x", "y"], SETTINGS),
        item_key("a" * 64, "prompt!", ["x", "y"], SETTINGS),
        item_key("a" * 64, "prompt", ["y", "x"], SETTINGS),
        item_key("a" * 64, "prompt", ["x", "y"], replace(SETTINGS, template_sha256="u" * 64)),
        item_key("a" * 64, "prompt", ["x", "y"], replace(SETTINGS, model="gpt-4.1")),
        item_key("a" * 64, "prompt", ["x", "y"], replace(SETTINGS, shuffle_seed=0)),
    ]
    assert len({base, *variants}) == 7


def test_shards_partition_the_keys() -> None:
    keys = [item_key(f"{i:064x}", "p", ["r"], SETTINGS) for i in range(1000)]
    shards = [shard_of(key, 4) for key in keys]
    assert set(shards) == {0, 1, 2, 3}
    assert all(150 < shards.count(s) < 350 for s in range(4))


BULLETS = """\
**Helpfulness**
- **Text 1**
  - **Rating**: 3 (Moderately helpful)
  - Rationale: It answers, with a gap.
- **Text 2**
  - **Rating**: 5 (Highly helpful)
  - Rationale: Complete.

**Visual Faithfulness**
- **Text 1**
  - **Rating**: 4
  - Rationale: Grounded.
- **Text 2**
  - **Rating**: 2
  - Rationale: Invents a dog.

**Ethical Considerations**
- **Text 1**
  - **Rating**: 5
  - Rationale: Safe.
- **Text 2**
  - **Rating**: 5
  - Rationale: Safe.
"""


def test_markdown_bullets_parse() -> None:
    verdict = read_reply(Reply(BULLETS), 2)
    assert verdict.outcome == "ok", verdict.problem
    first, second = verdict.ratings
    assert first["Helpfulness"] == (3, "It answers, with a gap.") and second["Helpfulness"] == (5, "Complete.")
    assert (first["Visual Faithfulness"][0], second["Visual Faithfulness"]) == (4, (2, "Invents a dog."))
    assert first["Ethical Considerations"] == (5, "Safe.")


def test_one_line_text_and_rating_parse() -> None:
    reply = "\n".join(
        f"## {aspect}\nOutput for Text 1: Rating: 4\nRationale: fine.\nOutput for Text 2: Rating: 2, Rationale: weak."
        for aspect in ASPECTS
    )
    verdict = read_reply(Reply(reply), 2)
    assert verdict.outcome == "ok", verdict.problem
    assert [verdict.ratings[0][a] for a in ASPECTS] == [(4, "fine.")] * 3
    assert verdict.ratings[1]["Ethical Considerations"] == (2, "weak.")


def test_json_with_a_trailing_comma_and_after_prose_with_braces_parses() -> None:
    ratings = {"Helpfulness": [4, 2], "Visual Faithfulness": [5, 1], "Ethical Considerations": [5, 5]}
    body = json.dumps(
        {a: [{"text": k + 1, "rationale": "r", "rating": v} for k, v in enumerate(vs)] for a, vs in ratings.items()}
    )
    trailing = body.replace("}]}", "},],}", 1).replace('"rating": 4}', '"rating": 4,}')
    assert json.loads(body) and trailing != body
    for reply in (trailing, "I read the set {text 1, text 2} as asked; here it is: " + body + "\nDone {ok}."):
        verdict = read_reply(Reply(reply), 2)
        assert verdict.outcome == "ok", verdict.problem
        assert [r["Helpfulness"][0] for r in verdict.ratings] == [4, 2]


def test_json_that_does_not_parse_is_named_in_the_reask() -> None:
    broken = '{"Helpfulness": [{"text": 1, "rationale": "ok" "rating": 4}], "Visual Faithfulness": []}'
    verdict = read_reply(Reply("Here you go:\n" + broken), 1)
    assert verdict.outcome == "malformed"
    assert verdict.problem.startswith("the JSON object in it does not parse (Expecting ',' delimiter")
    assert "has no Helpfulness rating" not in verdict.problem


ORIGINAL_TEMPLATE = """\
## Format:
Texts:
- <text 1> [Text 1]
- <text 2> [Text 2]

## Annotation
### Input
Instruction: [[instruction_placeholder]]

Texts:
- <text 1> [[text_1_placeholder]]
- <text 2> [[text_2_placeholder]]

### Output
"""


def test_the_original_template_placeholders_are_filled(tmp_path) -> None:
    path = tmp_path / "annotation_template.txt"
    path.write_text(ORIGINAL_TEMPLATE)
    template = load_template(path)
    assert template.texts == 2 and template.source == str(path)
    prompt = render_prompt(template, "What is {x}?", ["[[text_2_placeholder]] first", "second {texts}"])
    assert "Instruction: What is {x}?" in prompt
    assert "- <text 1> [[text_2_placeholder]] first\n- <text 2> second {texts}\n" in prompt
    assert "[Text 1]" in prompt and template.fits(3) and template.fits(2) is None
    path.write_text(ORIGINAL_TEMPLATE.replace("[[text_1_placeholder]]", ""))
    with pytest.raises(UserError, match=r"text_1_placeholder"):
        load_template(path)
