"""The ``vlfeedback annotate`` command line the pipeline tests run against the loopback judge.

cli_main(annotate_args(server.url, source, out, "--quiet"))                               # in this process
subprocess.run([sys.executable, "-m", "vlfeedback_kit.cli", *annotate_args(url, source, out)])  # in a child
"""

from __future__ import annotations

from pathlib import Path

JUDGE_KEY_ENV = "VLF_TEST_JUDGE_KEY"
"""The environment variable the tests put the judge's API key in."""


def annotate_args(
    base_url: str, source: Path, out: Path, *extra: str, judge_model: str = "gpt-4o", key_env: str = JUDGE_KEY_ENV
) -> list[str]:
    """``annotate --input SOURCE --out OUT --base-url URL --judge-model M --api-key-env VAR`` and then ``extra``."""
    return [
        "annotate",
        "--input",
        str(source),
        "--out",
        str(out),
        "--base-url",
        base_url,
        "--judge-model",
        judge_model,
        "--api-key-env",
        key_env,
        *extra,
    ]
