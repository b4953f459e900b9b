"""Every benchmark appends one JSON line saying where its numbers come from, and BENCHMARKS.md's commands run."""

import importlib
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from vlfeedback_kit import benchlog

ROOT = Path(__file__).resolve().parents[1]
BENCHES = ("builders.bench", "builders.pipeline.bench", "training.bench", "training.bench_scale", "training.memory",
           "eval.bench", "eval.arena.bench", "rounds.bench")  # fmt: skip


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_benchmark_run_appends_one_line_with_commit_versions_device_command_and_result(tmp_path, monkeypatch):
    """The dataset-build benchmark at its smallest: each run appends exactly one line to its file in the results dir
    (the flag, then the environment variable), with the provenance and the numbers it printed."""
    from vlfeedback_kit.builders.bench import main

    results = tmp_path / "results"
    small = ["--rows", "8", "--distinct-images", "2", "--cache-instructions", "0", "--workdir", str(tmp_path / "w")]
    main([*small, "--pair-instructions", "20", "--results-dir", str(results)])
    log = results / "builders.bench.jsonl"
    [first] = lines(log)
    assert re.fullmatch(r"[0-9a-f]{40}", first["commit"]) and isinstance(first["dirty"], bool)
    assert first["versions"]["python"] and {"datasets", "pyarrow", "huggingface_hub"} <= set(first["versions"])
    assert first["device"]["cpu_count"] >= 1 and first["device"]["cpu"]
    assert first["command"] == shlex.join(["python", "-m", "vlfeedback_kit.builders.bench", *small,
                                           "--pair-instructions", "20", "--results-dir", str(results)])  # fmt: skip
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", first["timestamp"])
    assert first["result"]["build"][0]["rows"] == 8 and first["result"]["pairs"]["instructions"] == 20

    monkeypatch.setenv(benchlog.ENV, str(results))
    main([*small, "--pair-instructions", "10"])
    first_again, second = lines(log)
    assert first_again == first
    assert second["result"]["pairs"]["instructions"] == 10 and second["command"].endswith("--pair-instructions 10")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results", "w"]  # nothing written elsewhere


@pytest.mark.parametrize("bench", BENCHES)
def test_every_benchmark_takes_a_results_dir(bench, tmp_path):
    parser = importlib.import_module(f"vlfeedback_kit.{bench}").make_parser()
    assert parser.parse_args(["--results-dir", str(tmp_path)]).results_dir == tmp_path


@pytest.mark.parametrize("bench", BENCHES)
def test_every_benchmark_refuses_an_abbreviated_flag(bench, tmp_path, capsys):
    """A shortened flag is refused, never taken for the flag it starts (as in the ``vlfeedback`` parsers)."""
    parser = importlib.import_module(f"vlfeedback_kit.{bench}").make_parser()
    for argv in (["--results-d", str(tmp_path)], [f"--results-d={tmp_path}"]):
        with pytest.raises(SystemExit) as refused:
            parser.parse_args(argv)
        assert refused.value.code == 2 and f"unrecognized arguments: {argv[0]}" in capsys.readouterr().err


def test_the_default_results_dir_is_the_checkouts_and_the_command_is_the_process_own(monkeypatch):
    monkeypatch.delenv(benchlog.ENV, raising=False)
    assert benchlog.results_dir() == ROOT / "benchmarks" / "results"
    monkeypatch.setattr(sys, "argv", ["/somewhere/eval/bench.py", "--skip-judge", "--prompts", "4"])
    assert benchlog.command("vlfeedback_kit.eval.bench", None) == (
        "python -m vlfeedback_kit.eval.bench --skip-judge --prompts 4"
    )


def git(folder: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=folder, check=True,
                   capture_output=True)  # fmt: skip


def test_the_commit_is_unknown_outside_a_git_checkout_and_results_do_not_make_a_tree_dirty(tmp_path, monkeypatch):
    monkeypatch.setattr(benchlog, "CHECKOUT", tmp_path)
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    assert benchlog.commit() == {"commit": "unknown", "dirty": None}
    results = tmp_path / "benchmarks" / "results" / "x.jsonl"
    results.parent.mkdir(parents=True)
    results.write_text("{}\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "first")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert benchlog.commit() == {"commit": head, "dirty": False}
    results.write_text("{}\n{}\n")  # a benchmark appended its line: the code is unchanged
    (tmp_path / "notes.txt").write_text("untracked")
    assert benchlog.commit() == {"commit": head, "dirty": False}
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'changed'\n")
    assert benchlog.commit() == {"commit": head, "dirty": True, "dirty_files": ["pyproject.toml"]}


def benchmark_commands() -> list[tuple[str, list[str]]]:
    """Every ``python -m <module> ...`` command in BENCHMARKS.md's code spans (line breaks inside a span joined)."""
    text = (ROOT / "BENCHMARKS.md").read_text()
    found = []
    for span in re.findall(r"`([^`]+)`", text):
        for match in re.finditer(r"python3? -m (\S+)((?: (?!&&|\||\(|python)\S+)*)", " ".join(span.split())):
            found.append((match.group(1), shlex.split(match.group(2))))
    return found


def test_benchmarks_md_commands_name_todays_modules_and_flags():
    """Each command in BENCHMARKS.md names a benchmark by its module path today and parses with its flags (the
    GPU re-run command once said ``python3 -m training.bench`` with ``PYTHONPATH``, which no longer imports)."""
    commands = benchmark_commands()
    benches = [(module, args) for module, args in commands if module.endswith(BENCHES)]
    assert len(benches) >= 20
    from vlfeedback_kit.training.bench import CONFIGS

    for module, args in benches:
        assert module.startswith("vlfeedback_kit.") and module.removeprefix("vlfeedback_kit.") in BENCHES, module
        parsed = importlib.import_module(module).make_parser().parse_args(args)
        if getattr(parsed, "configs", None):
            assert set(parsed.configs.split(",")) <= set(CONFIGS), (module, args)
    assert "PYTHONPATH=$PWD/.site:$PWD" not in (ROOT / "BENCHMARKS.md").read_text()
