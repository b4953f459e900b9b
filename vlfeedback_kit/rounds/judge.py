"""Stage 2 of a round: the pipeline's ``annotate`` rates the round's answers (its ledger, resume, breaker, cost cap
and structured output), and a round whose judge failed beyond ``judge.max_fail_rate`` stops with the reason."""

from __future__ import annotations

from pathlib import Path

from vlfeedback_kit.errors import UserError
from vlfeedback_kit.rounds.config import RoundsConfig


class RoundStopped(UserError):
    """A round cannot go on (its judge failed, the budget is spent): the reason, and what to do."""


def options(config: RoundsConfig, input_dir: Path, out_dir: Path, progress: bool, dry_run: bool = False):
    """The ``annotate`` options of a round (the judge settings are the same for every round)."""
    from vlfeedback_kit.builders.pipeline.annotate import AnnotateOptions

    judge = config.judge
    return AnnotateOptions(input_dir=input_dir, out_dir=out_dir, base_url=judge.base_url, judge_model=judge.model,
                           api_key_env=judge.api_key_env, concurrency=judge.concurrency,
                           max_fail_rate=judge.max_fail_rate, max_cost=judge.max_cost,
                           response_format=judge.response_format, prices=Path(judge.prices) if judge.prices else None,
                           dry_run=dry_run, progress=progress)  # fmt: skip


def judge_round(config: RoundsConfig, round_k: int, input_dir: Path, out_dir: Path, progress: bool = True) -> dict:
    """Judge the round's answers into ``out_dir`` (release layout with ratings); stops the round when judging is
    incomplete or more rows failed than ``judge.max_fail_rate`` allows, so no round trains on nothing."""
    from vlfeedback_kit.builders.pipeline.annotate import annotate

    report = annotate(options(config, input_dir, out_dir, progress))
    if not report["complete"]:
        stopped = report["run"].get("stopped") or f"{report['pending']} items pending"
        raise RoundStopped(f"round {round_k}: judging stopped ({stopped}); re-run the same command to continue "
                           "(nothing judged is asked again)")  # fmt: skip
    if report["fail_rate"] > config.judge.max_fail_rate or not report["ok"]:
        reasons = "; ".join(
            f"{count}x {reason[:120]}" for reason, count in list(report["failure_reasons"].items())[:3]
        )
        raise RoundStopped(
            f"round {round_k}: the judge rated {report['ok']} of {report['rows']} rows ({report['fail_rate']:.0%} "
            f"not rated > judge.max_fail_rate {config.judge.max_fail_rate:.0%}): {reasons or 'no reason recorded'}; "
            f"see {out_dir}/annotate/failures.jsonl, fix the judge and re-run (nothing is trained on this round)"
        )
    return {k: report[k] for k in ("rows", "ok", "failed", "refused", "invalid", "fail_rate")} | {
        "calls": report["run"]["calls"], "cost_usd": report["run"]["cost_usd"]}  # fmt: skip


def estimate_round(config: RoundsConfig, input_dir: Path, out_dir: Path) -> dict:
    """``annotate``'s own ``--dry-run`` estimate of judging one round's answers (no call is made)."""
    from vlfeedback_kit.builders.pipeline.annotate import annotate

    return annotate(options(config, input_dir, out_dir, progress=False, dry_run=True))
