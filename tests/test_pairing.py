"""Pairing policies against hand-computed expectations: ties, nulls, 3 completions, every option, determinism."""

import numpy as np
import pyarrow as pa
import pytest

from vlfeedback_kit.builders.features import ASPECTS, RAW_FEATURES
from vlfeedback_kit.builders.pairing import (
    PAIR_ARROW_SCHEMA,
    PairingPolicy,
    materialize_pairs,
    parse_policy_spec,
    response_table,
    select_pairs,
)

N = None


def raw_table(instructions: list[list[tuple]], responses: list[list[str]] | None = None) -> pa.Table:
    """A raw batch: one instruction per list of (H, VF, EC) ratings; responses default to distinct texts."""
    rows = []
    for i, ratings in enumerate(instructions):
        texts = responses[i] if responses else [f"response {k} of row {i}" for k in range(len(ratings))]
        rows.append(
            {
                "id": f"llava-{i}",
                "source": "LLaVA",
                "image": {"bytes": f"image-{i}".encode(), "path": f"llava-{i}.jpg"},
                "prompt": f"prompt {i}",
                "models": [f"m{k}" for k in range(len(ratings))],
                "completions": [
                    {
                        "model": f"m{k}",
                        "response": text,
                        "annotations": {a: {"Rating": r, "Rationale": "."} for a, r in zip(ASPECTS, rating)},
                    }
                    for k, (rating, text) in enumerate(zip(ratings, texts))
                ],
            }
        )
    return pa.Table.from_pylist(rows, schema=RAW_FEATURES.arrow_schema)


def pairs_of(table: pa.Table, policy: PairingPolicy) -> tuple[set[tuple[int, int, int]], dict]:
    """Selected pairs as {(row, chosen position, rejected position)} and the counts."""
    selection = select_pairs(response_table(table, policy.seed), policy)
    offsets = table.column("completions").combine_chunks().offsets.to_numpy()
    found = {
        (int(r), int(c - offsets[r]), int(j - offsets[r]))
        for r, c, j in zip(selection.row, selection.chosen, selection.rejected)
    }
    return found, selection.counts


PAPER_ROW = [(5, 5, 5), (3, 3, 3), (3, 3, 3), (1, N, 5)]  # scores 5, 3, 3, null


def test_paper_rule_drops_ties_and_skips_nulls():
    found, counts = pairs_of(raw_table([PAPER_ROW]), PairingPolicy())
    assert found == {(0, 0, 1), (0, 0, 2)}
    assert counts["candidates"] == 6
    assert counts["skipped_null"] == 3
    assert counts["dropped_ties"] == 1
    assert counts["pairs"] == 2


def test_three_completions_and_higher_mean_is_chosen():
    # means: 2.0, 4.0, 3.0 → pairs (1>0), (2>0), (1>2)
    found, counts = pairs_of(raw_table([[(2, 2, 2), (4, 4, 4), (2, 5, 2)]]), PairingPolicy())
    assert found == {(0, 1, 0), (0, 2, 0), (0, 1, 2)}
    assert counts["candidates"] == 3


def test_counts_reconcile_over_mixed_batch():
    table = raw_table([PAPER_ROW, [(1, 1, 1), (2, 2, 2)], [(5, 4, 3), (4, 4, 4), (3, 3, 3), (2, 1, 5)]])
    for policy in (PairingPolicy(), PairingPolicy(strategy="best-vs-random", min_margin=1, max_pairs_per_prompt=1)):
        _, counts = pairs_of(table, policy)
        dropped = sum(v for k, v in counts.items() if k.startswith(("skipped", "dropped", "not_")))
        assert counts["candidates"] == dropped + counts["pairs"]


def test_identical_responses_never_paired():
    table = raw_table([[(5, 5, 5), (1, 1, 1), (3, 3, 3)]], responses=[["Same answer.", " Same answer.  ", "Other"]])
    found, counts = pairs_of(table, PairingPolicy())
    assert found == {(0, 0, 2), (0, 2, 1)}
    assert counts["dropped_identical"] == 1


@pytest.mark.parametrize(
    ("aggregation", "weights", "expected"),
    [
        # responses: a=(5,1,5) b=(3,3,3) c=(2,4,N)
        ("mean", None, {(0, 0, 1)}),  # a: 11/3 > b: 3; c has a null
        ("min", None, {(0, 1, 0)}),  # a: 1, b: 3 → b>a; c null
        ("Helpfulness", None, {(0, 0, 1), (0, 0, 2), (0, 1, 2)}),  # 5 > 3 > 2, EC null ignored
        ("visual_faithfulness", None, {(0, 2, 0), (0, 2, 1), (0, 1, 0)}),  # 4 > 3 > 1
        ("weighted", (0.0, 1.0, 0.0), {(0, 2, 0), (0, 2, 1), (0, 1, 0)}),  # only VF weighted: null EC ignored
        ("weighted", (1.0, 1.0, 0.0), set()),  # a: 3, b: 3, c: 3 — all exact ties
    ],
)
def test_aggregations(aggregation, weights, expected):
    table = raw_table([[(5, 1, 5), (3, 3, 3), (2, 4, N)]])
    found, _ = pairs_of(table, PairingPolicy(aggregation=aggregation, weights=weights))
    assert found == expected


def test_min_margin_and_cap_keep_widest_margins():
    table = raw_table([[(5, 5, 5), (4, 4, 4), (2, 2, 2), (1, 1, 1)]])
    found, counts = pairs_of(table, PairingPolicy(min_margin=2))
    assert found == {(0, 0, 2), (0, 0, 3), (0, 1, 2), (0, 1, 3)}
    assert counts["dropped_margin"] == 2
    found, counts = pairs_of(table, PairingPolicy(max_pairs_per_prompt=2))
    # margin 4 first, then one of the two margin-3 pairs by the seeded tie-break
    assert len(found) == 2 and (0, 0, 3) in found and found - {(0, 0, 3)} <= {(0, 0, 2), (0, 1, 3)}
    assert counts["dropped_cap"] == 4


def test_length_ratio_filter_counters_verbosity():
    long, short = "word " * 30, "word " * 10
    table = raw_table([[(5, 5, 5), (1, 1, 1), (3, 3, 3)]], responses=[[long, short, long + "x"]])
    found, counts = pairs_of(table, PairingPolicy(max_length_ratio=1.5))
    assert found == {(0, 0, 2)}  # both others have a chosen 3× longer than the rejected
    assert counts["dropped_length"] == 2


def test_best_vs_worst_best_vs_all_best_vs_random():
    table = raw_table([[(5, 5, 5), (4, 4, 4), (2, 2, 2), (1, 1, 1)], [(3, 3, 3), (1, 1, 1), (2, 2, 2)]])
    assert pairs_of(table, PairingPolicy(strategy="best-vs-worst"))[0] == {(0, 0, 3), (1, 0, 1)}
    assert pairs_of(table, PairingPolicy(strategy="best-vs-all"))[0] == {
        (0, 0, 1),
        (0, 0, 2),
        (0, 0, 3),
        (1, 0, 1),
        (1, 0, 2),
    }
    found, counts = pairs_of(table, PairingPolicy(strategy="best-vs-random"))
    assert len(found) == 2 and all(chosen == 0 for _, chosen, _ in found)
    assert counts["not_selected"] == counts["candidates"] - counts["pairs"]


def test_best_vs_random_is_seeded_and_varies_with_seed():
    table = raw_table([[(5, 5, 5), (4, 4, 4), (3, 3, 3), (2, 2, 2)] for _ in range(64)])
    first, _ = pairs_of(table, PairingPolicy(strategy="best-vs-random", seed=1))
    again, _ = pairs_of(table, PairingPolicy(strategy="best-vs-random", seed=1))
    other, _ = pairs_of(table, PairingPolicy(strategy="best-vs-random", seed=2))
    assert first == again and first != other
    assert {rejected for _, _, rejected in first} == {1, 2, 3}  # every lower response gets picked somewhere


def test_selection_is_independent_of_batching():
    rng = np.random.default_rng(0)
    ratings = [[tuple(int(x) for x in rng.integers(1, 6, 3)) for _ in range(4)] for _ in range(40)]
    table = raw_table(ratings)
    for policy in (PairingPolicy(), PairingPolicy(strategy="best-vs-random", max_pairs_per_prompt=1, seed=7)):
        whole = select_pairs(response_table(table, policy.seed), policy)
        halves = [select_pairs(response_table(table.slice(s, 20), policy.seed), policy) for s in (0, 20)]
        ids = table.column("id").to_pylist()
        offsets = table.column("completions").combine_chunks().offsets.to_numpy()
        whole_set = {(ids[r], int(c - offsets[r])) for r, c in zip(whole.row, whole.chosen)}
        split_set = set()
        for start, half in zip((0, 20), halves):
            local = table.slice(start, 20).column("completions").combine_chunks().offsets.to_numpy()
            local = local - local[0]
            split_set |= {(ids[start + r], int(c - local[r])) for r, c in zip(half.row, half.chosen)}
        assert whole_set == split_set


def test_materialized_rows_are_trl_ready():
    table = raw_table([PAPER_ROW])
    policy = PairingPolicy()
    pairs = materialize_pairs(table, select_pairs(response_table(table), policy))
    assert pairs.schema.equals(PAIR_ARROW_SCHEMA)
    assert (
        pairs.column("images")
        .combine_chunks()
        .flatten()
        .flatten()[0]
        .dictionary.equals(table.column("image").combine_chunks().field("bytes"))
    )
    row = pairs.to_pylist()[0]
    assert row["images"] == [{"bytes": b"image-0", "path": "llava-0.jpg"}]
    assert row["prompt"] == [
        {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "prompt 0"}]}
    ]
    assert row["chosen"] == [{"role": "assistant", "content": [{"type": "text", "text": "response 0 of row 0"}]}]
    assert row["chosen_model"] == "m0" and row["rejected_model"] in ("m1", "m2")
    assert row["chosen_ratings"] == {a: 5 for a in ASPECTS}
    assert row["chosen_score"] == 5.0 and row["rejected_score"] == 3.0 and row["margin"] == 2.0


def test_policy_errors_name_the_option():
    with pytest.raises(ValueError, match="strategy"):
        PairingPolicy(strategy="best-vs-best")
    with pytest.raises(ValueError, match="weights"):
        PairingPolicy(aggregation="weighted")
    with pytest.raises(ValueError, match="max_pairs_per_prompt"):
        PairingPolicy(max_pairs_per_prompt=0)


def test_policy_specs_and_round_trip():
    name, policy = parse_policy_spec("gap:strategy=best-vs-all,min_margin=1.5,aggregation=weighted,weights=1/2/0")
    assert name == "gap" and policy.weights == (1.0, 2.0, 0.0) and policy.min_margin == 1.5
    assert PairingPolicy.from_dict(policy.to_dict()) == policy
    assert parse_policy_spec("best-vs-worst")[1].strategy == "best-vs-worst"
    with pytest.raises(ValueError, match="preset"):
        parse_policy_spec("no-such-preset")
    with pytest.raises(ValueError, match="unknown pairing option"):
        parse_policy_spec("x:colour=red")
