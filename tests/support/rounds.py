"""A loopback judge with a rule a tiny model can learn, and a small rounds workspace, for the rounds tests.

The rule: **an answer with more digit characters is better**. A tiny random model samples number tokens ("95", "20")
among ~1000 tokens, so the n samples of one prompt differ in their digit count (the pairs have a margin), and DPO can
learn a direction that raises every number token; the base's greedy answers hold few digits. The annotate rubric
gets ratings 1 + digits // 2 (at most 5) on every aspect; a win-rate prompt gets ``Verdict: A`` / ``B`` for the
answer with more digits, ``tie`` when equal.
"""

from __future__ import annotations

import re
from pathlib import Path

from support.eval_judge import EvalJudgeServer
from support.openai_server import REFUSAL, TEXT_BLOCK, kit_reply
from support.pipeline import JUDGE_KEY_ENV

WINRATE_ANSWERS = re.compile(r"### Answer A\n(.*)\n\n### Answer B\n(.*)\Z", re.DOTALL)


def digits(text: str) -> int:
    return sum(c.isdigit() for c in text)


def rating(text: str) -> int:
    return min(5, 1 + digits(text) // 2)


class RuleJudge(EvalJudgeServer):
    """The loopback judge of the rounds tests (see the module docstring); ``refuse``: every rubric request gets a
    refusal (a judge that fails the whole round)."""

    def __init__(self, refuse: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.refuse = refuse

    def reply_for(self, text: str) -> str:
        texts = [body for _, body in TEXT_BLOCK.findall(text)]
        if texts:
            return REFUSAL if self.refuse else kit_reply([(rating(t),) * 3 for t in texts])
        pair = WINRATE_ANSWERS.search(text.rstrip("\n"))
        if pair:
            a, b = digits(pair.group(1)), digits(pair.group(2))
            return "By the rule.\nVerdict: " + ("A" if a > b else "B" if b > a else "tie")
        return super().reply_for(text)

    def rubric_calls(self) -> int:
        """Annotate calls answered so far."""
        return sum(1 for call in self.calls if "<text 1>" in call.text)

    def winrate_calls(self) -> int:
        """Win-rate calls answered so far."""
        return sum(1 for call in self.calls if "### Answer A" in call.text)


def workspace(root: Path, judge_url: str, prompts: int = 12, heldout: int = 8, **overrides) -> Path:
    """A tiny base model, prompt and held-out folders (the kit's sample, two seeds) and ``rounds.yaml``."""
    import yaml

    from vlfeedback_kit.builders.sample import write_sample
    from vlfeedback_kit.training.tiny_model import build_tiny_model

    if not (root / "base").is_dir():
        build_tiny_model("qwen2_vl", root / "base")
    if not (root / "prompts").is_dir():
        write_sample(root / "prompts", prompts, seed=0)
        write_sample(root / "heldout", heldout, seed=1)
    config = {
        "base_model": "base", "prompts": "prompts", "heldout": "heldout", "rounds": 2, "samples": 4,
        "batch_size": 16, "dtype": "float32",
        "generation": {"max_new_tokens": 16, "temperature": 1.0, "seed": 0},
        "judge": {"base_url": judge_url, "model": "gpt-4o", "api_key_env": JUDGE_KEY_ENV, "concurrency": 8},
        "pairing": {"min_margin": 1.0, "max_pairs_per_prompt": 2, "max_length_ratio": None},
        "train": {"recipe": "tiny", "accelerate": "cpu", "overrides": {"max_steps": 12, "learning_rate": 5.0e-3,
                                                                       "audit": False}},
    }  # fmt: skip
    for key, value in overrides.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    path = root / "rounds.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def serve() -> None:
    """Run the rule judge until killed, its URL as the first line of stdout (the rounds benchmark's judge)."""
    import threading

    with RuleJudge() as server:
        print(server.url, flush=True)
        threading.Event().wait()
