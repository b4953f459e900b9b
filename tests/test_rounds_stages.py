"""``vlfeedback rounds`` stage by stage: a bad config is one line, ``--dry-run`` prices the rounds without a call,
generation resumes per prompt with the answers an uninterrupted run gives, training resumes from its checkpoint,
and a run folder refuses another config."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from support.pipeline import JUDGE_KEY_ENV
from support.rounds import RuleJudge, workspace

from vlfeedback_kit import serving
from vlfeedback_kit.cli import main as cli_main
from vlfeedback_kit.errors import UserError
from vlfeedback_kit.rounds import generate, train
from vlfeedback_kit.rounds.config import load_config
from vlfeedback_kit.rounds.loop import check_record, label_of, policy_of


@pytest.fixture
def rounds_yaml(tmp_path):
    return workspace(tmp_path, "http://127.0.0.1:9/v1", prompts=6, heldout=2)


def edit(path, **changes):
    data = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sample": 4}, "unknown key 'sample'; valid keys:"),
        ({"samples": 1}, "samples must be at least 2"),
        ({"judge": None}, "'judge' is required"),
        ({"judge": {"modle": "x"}}, "judge: unknown key 'modle'"),
        ({"generation": {"temperature": 0}}, "generation.temperature must be > 0"),
        ({"pairing": {"strategy": "best"}}, "pairing: unknown strategy 'best'"),
        ({"train": {"overrides": {"output_dir": "x"}}}, "train.overrides sets 'output_dir'"),
        ({"heldout": "nowhere"}, "heldout "),
        ({"engine": "openai"}, "engine openai needs engine_base_url"),
        ({"heldout": "prompts"}, "6 prompts (first: pmc-vqa-0) are also in prompts"),
        ({"eval": {"benchmarks": {"winrate": "x"}}}, "eval.benchmarks 'winrate': use mme, mmhal"),
        ({"eval": {"pick_by": "mme:perception"}}, "or BENCHMARK:KEY of a benchmark in eval.benchmarks"),
        ({"eval": {"pick_order": "lowest"}}, "eval.pick_order must be one of max, min"),
        ({"judge": {"base_url": ["http://a/v1", "http://a/v1"]}}, "judge.base_url: http://a/v1 is listed more than"),
        ({"engine": "openai", "engine_base_url": [""]}, "engine_base_url: no base URL given"),
    ],
)
def test_a_bad_config_is_one_line_naming_the_key(rounds_yaml, tmp_path, capsys, changes, message):
    edit(rounds_yaml, **changes)
    assert cli_main(["rounds", "--config", str(rounds_yaml), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("vlfeedback rounds: error: ")
    assert not (tmp_path / "out").exists()


def test_dry_run_prices_every_round_without_a_call(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(serving, "load", lambda *a, **k: pytest.fail("a dry run loads no model"))
    with RuleJudge() as server:
        path = workspace(tmp_path, server.url, prompts=6, heldout=2)
        assert cli_main(["rounds", "--config", str(path), "--out", str(tmp_path / "out"), "--dry-run",
                         "--rounds", "3"]) == 0  # fmt: skip
    assert server.calls == []
    plan = json.loads(capsys.readouterr().out)
    assert [r["round"] for r in plan["rounds"]] == [1, 2, 3]
    first, second = plan["rounds"][:2]
    assert first["generations"] == 6 * 4 and first["judge_calls"] == 6
    assert first["winrate_judge_calls"] == 2 * 2 * 1 and second["winrate_judge_calls"] == 2 * 2 * 2
    assert "fresh LoRA" in first["train"] and "from round-1" in second["train"]
    assert second["estimated_cost_usd"] > first["estimated_cost_usd"] > 0  # gpt-4o is in the price table
    assert plan["estimated_total_usd"] == pytest.approx(sum(r["estimated_cost_usd"] for r in plan["rounds"]), 1e-3)


class Killed(Exception):
    pass


def test_generation_resumes_per_prompt_with_the_uninterrupted_answers(rounds_yaml, tmp_path, monkeypatch):
    config = load_config(edit(rounds_yaml, batch_size=2))
    policy = policy_of(config, tmp_path / "out", 1)
    asked = []
    sample = serving.sample
    monkeypatch.setattr(serving, "sample", lambda served, prompts, *a, **k: asked.append(len(prompts))
                        or sample(served, prompts, *a, **k))  # fmt: skip

    def kill(done: int) -> None:
        if done == 4:
            raise Killed

    with pytest.raises(Killed):
        generate.generate_local(config, 1, policy, tmp_path / "resumed", progress=False, after_batch=kill)
    assert not (tmp_path / "resumed" / "responses.jsonl").exists()
    report = generate.generate_local(config, 1, policy, tmp_path / "resumed", progress=False)
    assert asked == [2, 2, 2] and report["answered"] == 6  # the two committed batches are not asked again
    config_whole = load_config(edit(rounds_yaml, batch_size=6))
    generate.generate_local(config_whole, 1, policy, tmp_path / "whole", progress=False)
    resumed = (tmp_path / "resumed" / "responses.jsonl").read_text()
    assert resumed == (tmp_path / "whole" / "responses.jsonl").read_text()  # seeds per (round, prompt, draw)


def test_training_resumes_from_its_last_checkpoint(rounds_yaml, tmp_path):
    config = load_config(rounds_yaml)
    run = tmp_path / "run"
    fresh = train.train_command(config, tmp_path / "dataset", run, {"adapter": None, "adapter_revision": None})
    assert "--resume_from_checkpoint" not in fresh and "--init_adapter" not in fresh
    (run / "checkpoint-4").mkdir(parents=True)
    start = {"adapter": str(tmp_path / "round-1" / "run"), "adapter_revision": None}
    resumed = train.train_command(config, tmp_path / "dataset", run, start)
    assert resumed[-2:] == ["--resume_from_checkpoint", "true"]
    at = resumed.index("--init_adapter")
    assert resumed[at : at + 4] == ["--init_adapter", start["adapter"], "--reference_policy", "base"]
    assert resumed[resumed.index("--dataset_config") + 1] == "round-pairs"
    assert resumed[resumed.index("--learning_rate") + 1] == "0.005" and "false" in resumed  # recipe overrides
    (run / "checkpoint-4").rmdir()
    (run / "trainer_log.jsonl").write_text("{}")  # killed before its first checkpoint
    assert train.train_command(config, tmp_path / "dataset", run, start)[-2:] == ["--overwrite_output_dir", "true"]


def test_a_run_folder_refuses_another_config_but_may_grow(rounds_yaml, tmp_path):
    out = tmp_path / "out"
    judge = yaml.safe_load(rounds_yaml.read_text())["judge"]
    check_record(load_config(rounds_yaml), out)
    check_record(load_config(edit(rounds_yaml, rounds=5)), out)  # --rounds N extends a run
    # where the judge is served may change (a replica added, a moved deployment): nothing a round computes changes
    replicas = {"base_url": ["http://127.0.0.1:9/v1", "http://127.0.0.1:8/v1"], "concurrency": 4}
    check_record(load_config(edit(rounds_yaml, judge=replicas)), out)
    with pytest.raises(UserError, match=r"another config \(judge\.model changed\); .* judge and policy endpoints"):
        check_record(load_config(edit(rounds_yaml, judge={"model": "another-judge"})), out)
    with pytest.raises(UserError, match=r"another config \(samples changed\)"):
        check_record(load_config(edit(rounds_yaml, judge=judge, samples=3)), out)


def test_engine_openai_samples_through_decode_with_one_member_per_sample(rounds_yaml, tmp_path, monkeypatch):
    monkeypatch.setenv(JUDGE_KEY_ENV, "sk-test")
    with RuleJudge() as server:
        config = load_config(edit(rounds_yaml, engine="openai", engine_base_url=server.url,
                                  engine_api_key_env=JUDGE_KEY_ENV))  # fmt: skip
        report = generate.generate_openai(config, 2, "round-1", tmp_path / "answers", progress=False)
        again = generate.generate_openai(config, 2, "round-1", tmp_path / "answers", progress=False)
    assert report["answered"] == again["answered"] == 6
    assert len(server.calls) == 6 * 4 and {c.model for c in server.calls} == {"round-1"}  # the adapter by name
    row = json.loads((tmp_path / "answers" / "responses.jsonl").open().readline())
    assert sorted(row["models"]) == [f"round2-sample{j}" for j in range(4)]  # decode draws the members' order


def test_kill_9_while_judging_pays_only_the_call_in_flight_again(tmp_path):
    """A pairing no answer pair can meet (margin 5 on ratings 1-5) stops the round right after judging, so the
    re-run shows the resumed judge without training."""
    overrides = {"rounds": 1, "judge": {"concurrency": 1}, "pairing": {"min_margin": 5.0}}
    env = {**os.environ, JUDGE_KEY_ENV: "sk-test", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    with RuleJudge() as server:
        path = workspace(tmp_path, server.url, prompts=6, heldout=2, **overrides)
        command = [sys.executable, "-m", "vlfeedback_kit.cli", "rounds", "--config", str(path), "--out",
                   str(tmp_path / "out"), "--quiet"]  # fmt: skip
        child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server.on_call = lambda n: server.rubric_calls() == 3 and os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=300) == -signal.SIGKILL
        server.on_call = None
        assert not (tmp_path / "out" / "round-1" / "judge.done.json").exists()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert server.rubric_calls() == 6 + 1  # the third call's reply died with the process: asked once more
    assert done.returncode == 2 and "round 1: the pairing policy kept no pair of 6 judged rows" in done.stderr
    assert (tmp_path / "out" / "round-1" / "judge.done.json").is_file()
    assert not (tmp_path / "out" / "round-1" / "run").exists()  # nothing is trained on a round without pairs


def test_round_one_starts_from_the_start_adapter(rounds_yaml, tmp_path):
    (tmp_path / "silkie").mkdir()
    config = load_config(edit(rounds_yaml, start_adapter="silkie", train={"reference": "init"}))
    policy = policy_of(config, tmp_path / "out", 1)
    assert policy["adapter"] == str(tmp_path / "silkie") and policy["adapter_name"] == "silkie"
    command = train.train_command(config, tmp_path / "dataset", tmp_path / "run", policy)
    at = command.index("--init_adapter")
    assert command[at : at + 4] == ["--init_adapter", str(tmp_path / "silkie"), "--reference_policy", "init"]
    assert label_of(config, 0) == "start" and policy_of(config, tmp_path / "out", 2)["adapter_name"] == "round-1"


def test_the_engine_flag_overrides_the_config_and_is_checked(rounds_yaml, tmp_path, capsys):
    flags = ["rounds", "--config", str(rounds_yaml), "--out", str(tmp_path / "out"), "--engine", "openai"]
    assert cli_main(flags) == 2
    assert "engine openai needs engine_base_url" in capsys.readouterr().err


def test_kill_9_while_training_resumes_from_the_last_checkpoint(tmp_path):
    """The whole process group (rounds → train → accelerate → dpo.py) is killed once checkpoint-2 exists."""
    overrides = {"rounds": 1, "train": {"overrides": {"max_steps": 4, "save_strategy": "steps", "save_steps": 2,
                                                      "learning_rate": 5.0e-3, "audit": False}}}  # fmt: skip
    env = {**os.environ, JUDGE_KEY_ENV: "sk-test", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    run = tmp_path / "out" / "round-1" / "run"
    with RuleJudge() as server:
        path = workspace(tmp_path, server.url, prompts=4, heldout=2, **overrides)
        command = [sys.executable, "-m", "vlfeedback_kit.cli", "rounds", "--config", str(path), "--out",
                   str(tmp_path / "out"), "--quiet"]  # fmt: skip
        child = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)  # fmt: skip
        while not (run / "checkpoint-2" / "trainer_state.json").is_file():
            assert child.poll() is None, "the run ended before its first checkpoint"
            time.sleep(0.2)
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        assert not (run / "run_info.json").exists()
        calls = server.rubric_calls()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "out" / "round-1" / "train.done.json").read_text())["resumed"] is True
    assert json.loads((run / "trainer_state.json").read_text())["global_step"] == 4
    assert server.rubric_calls() == calls == 4  # judged once, before the kill


def test_a_built_folder_gives_its_train_prompts_and_held_out_test_split(tmp_path, capsys):
    from vlfeedback_kit.builders.build import BuildOptions, build
    from vlfeedback_kit.builders.sample import write_sample
    from vlfeedback_kit.cards.dataset import write_dataset_card

    write_sample(tmp_path / "release", 20, seed=0)
    report = build(BuildOptions(source=str(tmp_path / "release"), out_dir=tmp_path / "built", eval_fraction=0.3,
                                progress=False, card=write_dataset_card))  # fmt: skip
    train_rows, test_rows = report["splits"]["raw"]["train"], report["splits"]["raw"]["test"]
    path = workspace(tmp_path, "http://127.0.0.1:9/v1", prompts=4, heldout=2)
    edit(path, prompts="built", heldout="built")
    assert cli_main(["rounds", "--config", str(path), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["rounds"][0]["generations"] == train_rows * 4
    assert plan["rounds"][0]["winrate_judge_calls"] == test_rows * 2
    exported = json.loads((tmp_path / "out" / "inputs" / "heldout" / "exported.json").read_text())
    assert exported == {"source": "built", "config": "raw", "split": "test", "rows": test_rows}
    rebuilt = tmp_path / "no-test"
    build(BuildOptions(source=str(tmp_path / "release"), out_dir=rebuilt, progress=False, card=write_dataset_card))
    edit(path, heldout="no-test")
    assert cli_main(["rounds", "--config", str(path), "--out", str(tmp_path / "out2"), "--dry-run"]) == 2
    assert "has no `test` split (build it with --eval-fraction" in capsys.readouterr().err


def test_the_best_round_by_a_benchmark_number():
    from types import SimpleNamespace

    from vlfeedback_kit.rounds.report import pick_value, summary

    record = {"eval": {"benchmarks": {"mme": {"perception": 120.5, "cognition": 40.0}}}}
    assert pick_value(record, "mme:perception") == 120.5
    config = SimpleNamespace(eval=SimpleNamespace(pick_by="mmhal:hallucination_rate", pick_order="min"))
    records = [{"round": k, "pairs": 1, "eval": {"vs_base": {}, "vs_previous": {}, "mean_words": {},
                                                 "benchmarks": {"mmhal": {"hallucination_rate": rate}}}}
               for k, rate in ((1, 0.40), (2, 0.31), (3, 0.35))]  # fmt: skip
    assert summary(records, config)["best_round"] == 2  # the lowest rate, where lower is better
    config.eval.pick_order = "max"
    assert summary(records, config)["best_round"] == 1
    with pytest.raises(UserError, match=r"mme's scores have no number 'total' \(they have perception, cognition\)"):
        pick_value(record, "mme:total")
