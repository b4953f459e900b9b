"""``vlfeedback rounds``: two on-policy rounds on a tiny Qwen2-VL learn the loopback judge's rule, and a run killed
at any stage finishes on a re-run without paying the judge twice.

The judge (tests/support/rounds.py) prefers answers with more digit characters: the rubric rates 1 + digits // 2,
and a win-rate verdict goes to the answer with more digits (tie when equal). A tiny random model samples number
tokens often enough for its 4 samples per prompt to differ, and DPO learns to emit more of them; the base's greedy
answers hold few, so round 2 beats the base on held-out prompts only if the rounds really learnt the rule.
"""

import json

import pytest
from support.eval_data import write_mme
from support.pipeline import JUDGE_KEY_ENV
from support.rounds import RuleJudge, workspace

from vlfeedback_kit.cli import main as cli_main
from vlfeedback_kit.rounds.config import load_config
from vlfeedback_kit.rounds.judge import RoundStopped
from vlfeedback_kit.rounds.loop import run_rounds


class Killed(Exception):
    """Stands for a kill -9 between two stages."""


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory):
    """Two rounds run to the end through three kills (before round 1's judge, round 2's train and its evaluate),
    each followed by a re-run of the same call; yields (server, out folder, summary)."""
    root = tmp_path_factory.mktemp("rounds")
    with pytest.MonkeyPatch.context() as patch, RuleJudge() as server:
        patch.setenv(JUDGE_KEY_ENV, "sk-test")
        patch.setenv("HF_HUB_OFFLINE", "1")
        write_mme(root / "mme", images=1)
        config = load_config(workspace(root, server.url, eval={"benchmarks": {"mme": "mme"}}))
        kills = {(1, "judge"), (2, "train"), (2, "evaluate")}
        stopped = []

        def hook(k: int, stage: str) -> None:
            if (k, stage) in kills:
                kills.discard((k, stage))
                stopped.append((k, stage))
                raise Killed

        for _ in range(4):
            try:
                summary = run_rounds(config, root / "out", progress=False, hook=hook)
                break
            except Killed:
                continue
        assert stopped == [(1, "judge"), (2, "train"), (2, "evaluate")]
        yield server, root / "out", summary


def test_round_two_beats_the_base_on_held_out_prompts(two_rounds):
    server, out, summary = two_rounds
    second = summary["rounds"][1]["vs_base"]
    low, high = second["win_rate_ci"]
    assert second["model"] == "round-2" and second["other"] == "base" and second["n"] == 8
    assert second["win_rate"] > 0.5 and low <= second["win_rate"] <= high
    assert second["wins"] > second["losses"]
    assert isinstance(second["length_controlled"], dict)  # style control, from eval's pairwise statistics
    report = (out / "report.md").read_text()
    assert report.count("; LC ") == 4  # every win rate also comes length-controlled (a number or why not)
    assert f"{second['win_rate']:.3f} [{low:.3f}, {high:.3f}]" in report
    assert f"**round {summary['best_round']}**" in report and (out / "rounds.png").stat().st_size > 0
    rounds = json.loads((out / "dataset" / "rounds.json").read_text())["rounds"]
    perception = [r["eval"]["benchmarks"]["mme"]["perception"] for r in rounds]  # the listed benchmark, each round
    base = json.loads((out / "eval" / "benchmarks-base.json").read_text())["mme"]["perception"]
    assert f"| mme | perception | {base:.4g} | {perception[0]:.4g} | {perception[1]:.4g} |" in report


def test_nothing_is_judged_twice_across_kills(two_rounds, capsys, monkeypatch):
    server, out, summary = two_rounds
    assert server.rubric_calls() == 2 * 12  # one annotate call per prompt per round
    comparisons = 1 + 2  # round 1 vs base (its previous policy is the base); round 2 vs base and vs round 1
    assert server.winrate_calls() == comparisons * 8 * 2  # every held-out prompt in both orders, once
    monkeypatch.setenv(JUDGE_KEY_ENV, "sk-test")
    assert cli_main(["rounds", "--config", str(out.parent / "rounds.yaml"), "--out", str(out), "--quiet"]) == 0
    assert server.rubric_calls() == 24 and server.winrate_calls() == 48  # a finished run re-run: no call
    printed = capsys.readouterr().out
    assert f"round 2: {summary['rounds'][1]['pairs']} pairs; win rate vs base" in printed
    assert f"best round by winrate_vs_base: {summary['best_round']}" in printed


def test_round_two_trains_from_round_one_adapter(two_rounds):
    _, out, summary = two_rounds
    first = json.loads((out / "round-1" / "run" / "run_info.json").read_text())
    second = json.loads((out / "round-2" / "run" / "run_info.json").read_text())
    assert first.get("init_adapter") is None
    assert second["init_adapter"]["name"] == "run" and second["init_adapter"]["local"] is True
    assert second["reference_policy"] == "base"
    assert summary["rounds"][1]["vs_previous"]["other"] == "round-1"
    assert json.loads((out / "round-2" / "generate.done.json").read_text())["answered"] == 12
    rows = [json.loads(line) for line in (out / "round-2" / "answers" / "responses.jsonl").open()]
    assert rows[0]["models"] == [f"round2-sample{j}" for j in range(4)]
    assert len({c["response"] for c in rows[0]["completions"]}) > 1  # seeded samples differ


def test_the_dataset_version_holds_each_round_as_configs(two_rounds):
    from datasets import load_dataset

    _, out, summary = two_rounds
    lineage = json.loads((out / "dataset" / "rounds.json").read_text())
    assert [r["round"] for r in lineage["rounds"]] == [1, 2]
    assert lineage["rounds"][1]["policy"] == {"model_name": "base", "adapter_name": "round-1",
                                              "adapter_revision": None}  # fmt: skip
    assert lineage["pairing"]["min_margin"] == 1.0
    pairs = load_dataset(str(out / "dataset"), "round-2-pairs", split="train")
    assert len(pairs) == summary["rounds"][1]["pairs"] > 0
    assert len(load_dataset(str(out / "dataset"), "round-1", split="train")) == 12
    card = (out / "dataset" / "README.md").read_text()
    assert "| 2 | base + round-1 | gpt-4o | 12 |" in card
    assert str(out) not in card and str(out) not in (out / "dataset" / "rounds.json").read_text()


def test_a_judge_failing_beyond_the_fail_rate_stops_the_round(tmp_path, monkeypatch):
    monkeypatch.setenv(JUDGE_KEY_ENV, "sk-test")
    with RuleJudge(refuse=True) as server:
        config = load_config(workspace(tmp_path, server.url, prompts=4, heldout=2))
        stopped = r"round 1: the judge rated 0 of 4 rows .*judge.max_fail_rate 5%.*refus"
        with pytest.raises(RoundStopped, match=stopped):
            run_rounds(config, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "round-1" / "run").exists()
    assert not (tmp_path / "out" / "round-1" / "judge.done.json").exists()


def test_publish_carries_every_round_and_each_round_model_names_its_lineage(
    two_rounds, hub, monkeypatch, capsys, tmp_path
):
    _, out, summary = two_rounds
    monkeypatch.setenv("HF_TOKEN", "hf_roundsSECRETtoken0123456789abcdef")
    monkeypatch.setenv(JUDGE_KEY_ENV, "sk-test")
    flags = ["rounds", "--config", str(out.parent / "rounds.yaml"), "--out", str(out), "--quiet",
             "--publish-dataset", "org/rounds-data", "--publish-model", "org/silkie-rounds"]  # fmt: skip
    assert cli_main([*flags, "--publish-dry-run", str(tmp_path / "tree")]) == 0
    assert not hub.repos  # a dry run uploads nothing
    assert (tmp_path / "tree" / "dataset" / "data" / "round-2-pairs").is_dir()
    assert "Round 2 of on-policy" in (tmp_path / "tree" / "models" / "round-2" / "README.md").read_text()
    capsys.readouterr()
    assert cli_main(flags) == 0
    printed = capsys.readouterr().out
    assert "dataset: org/rounds-data v0.2.0 (published)" in printed
    assert "model: org/silkie-rounds v0.1.0, v0.2.0" in printed
    dataset, models = hub.repo("org/rounds-data"), hub.repo("org/silkie-rounds", "model")
    assert set(dataset.tags) == {"v0.2.0"} and set(models.tags) == {"v0.1.0", "v0.2.0"}
    files = dataset.resolve("v0.2.0").files
    assert "config_name: round-2-pairs" in files["README.md"].content.decode()
    assert any(path.startswith("data/round-1/") for path in files) and "rounds.json" in files
    card = models.resolve("v0.2.0").files["README.md"].content.decode()
    second = summary["rounds"][1]["vs_base"]
    assert "Round 2 of on-policy DPO rounds" in card and "round 1 (`org/silkie-rounds` revision `v0.1.0`)" in card
    assert "config\n`round-2-pairs` of `org/rounds-data` at revision `v0.2.0`" in card
    assert f"| vs base | {second['win_rate']:.3f} |" in card
    first = models.resolve("v0.1.0").files["README.md"].content.decode()
    assert "answers of\nthe base model `base`" in first
    assert cli_main(flags) == 0  # a re-run publishes nothing twice
    printed = capsys.readouterr().out
    assert "dataset: org/rounds-data already published" in printed and "every round is published" in printed
