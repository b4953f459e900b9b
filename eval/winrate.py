"""Win-rate of Silkie against its base on held-out VLFeedback prompts, judged in both orders.

Data: the ``raw`` config's ``test`` split of a built folder, as its card declares it (what
``load_dataset(folder, "raw", split="test")`` reads; ``vlfeedback build --eval-fraction`` writes it), or one
``raw``-config Parquet file (``id``, ``image``, ``prompt``). Held-out means held out from the adapter: when its
``run_info.json`` names the data it trained on, :func:`refuse_trained` refuses items whose ids are in it.

The judge (the kit's pairwise template) sees the image, the prompt and the two answers, once with Silkie as A and
once with the base as A; :func:`vlfeedback_kit.eval.pairwise.swap_consistent` turns the two verdicts into one
outcome (a verdict that flips with the order is a tie). The statistics are
:func:`vlfeedback_kit.eval.pairwise.summarize_battles`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

from vlfeedback_kit.errors import UserError
from vlfeedback_kit.eval.items import Item, image_bytes_of
from vlfeedback_kit.eval.pairwise import Battle, style_of, summarize_battles, swap_consistent

RUN_INFO = "run_info.json"
TEMPLATE_FILE = Path(__file__).parent / "judge_templates" / "winrate.txt"
ORDERS: tuple[str, ...] = ("ab", "ba")
"""``ab``: the model under test is answer A; ``ba``: it is answer B."""
_VERDICT = re.compile(r"verdict\s*[:：]\s*\**\s*(a|b|tie)\b", re.IGNORECASE)


def judge_prompt(question: str, answer_a: str, answer_b: str) -> str:
    return TEMPLATE_FILE.read_text(encoding="utf-8").format(question=question, answer_a=answer_a, answer_b=answer_b)


def parse_verdict(reply: str | None) -> str | None:
    """``model_a``, ``model_b`` or ``tie`` when the reply names exactly one verdict, else None."""
    found = {m.lower() for m in _VERDICT.findall(reply or "")}
    if len(found) != 1:
        return None
    return {"a": "model_a", "b": "model_b", "tie": "tie"}[found.pop()]


def outcome(ab: str, ba: str) -> str:
    """One outcome from the model's side as A: the ``ba`` verdict is mapped back to the ``ab`` positions."""
    return swap_consistent(ab, ba)


def score(
    verdicts: Mapping[str, tuple[str | None, str | None]],
    model: str,
    other: str,
    seed: int = 0,
    rounds: int = 1000,
    answers: Mapping[str, tuple[str, str]] | None = None,
) -> dict:
    """W / T / L, win rate with a bootstrap 95% CI and the Bradley–Terry gap; unparsed verdicts counted and the
    item left out (never a silent tie). With ``answers`` (item id → (``model``'s answer, ``other``'s answer)) for
    every item, also ``length_controlled``: the same win rate style-controlled for answer length and Markdown
    (:func:`vlfeedback_kit.eval.pairwise.length_controlled`), since a judge that likes longer answers rewards DPO's
    longer answers whether or not they are better (``length_controlled_win_rate``: its win rate, the card's metric;
    None without answers or when it cannot be told)."""
    if answers is not None and (absent := [item for item in verdicts if item not in answers]):
        raise UserError(f"winrate: {len(absent)} judged items have no answers to control length with (first: "
                        f"{absent[0]}); pass both answers of every item, or none")  # fmt: skip
    battles, unparsed = [], 0
    for item, (ab, ba) in verdicts.items():
        if ab is None or ba is None:
            unparsed += 1
            continue
        styles = tuple(style_of(answer) for answer in answers[item]) if answers is not None else (None, None)
        battles.append(Battle(model, other, outcome(ab, ba), *styles))
    if not battles:
        raise UserError("winrate: no item has both verdicts parsed; nothing to score")
    summary = summarize_battles(battles, model, other, rounds=rounds, seed=seed)
    controlled = summary.length_controlled
    return {**summary.to_dict(), "length_controlled_win_rate": controlled.win_rate if controlled else None,
            "unparsed": unparsed, "items": len(verdicts),
            "scorer": "kit convention: both orders, swap-consistent verdicts, ties as half"}  # fmt: skip


NO_TEST_SPLIT = (
    "has no held-out split (its raw config has no `test` split: a build without --eval-fraction holds nothing out); "
    "rebuild with `vlfeedback build ... --eval-fraction 0.005` and train on that build, whose `test` prompts "
    "training never sees"
)


def held_out_files(path: Path) -> list[str]:
    """The Parquet files of the held-out split: a built folder's ``raw``/``test`` as its card's ``configs`` declare
    it (a Hub snapshot ``eval run`` fetched without its card: the build's ``data/raw/test-*`` layout), or the file
    itself. Never any other Parquet (the pairs, a ``.ref_logps`` cache): their rows are not held-out prompts."""
    from fsspec.implementations.local import LocalFileSystem

    from vlfeedback_kit.builders.build import RAW_CONFIG
    from vlfeedback_kit.builders.inspect import _configs

    if path.is_file():
        return [str(path)]
    if (path / "README.md").is_file():
        declared = _configs(LocalFileSystem(), str(path.resolve()))
        if RAW_CONFIG not in declared:
            raise UserError(f"--data winrate={path}: its README declares no `raw` config; pass a folder written "
                            "by `vlfeedback build` (or one raw-config Parquet file)")  # fmt: skip
        files = declared[RAW_CONFIG].get("test", [])
    elif (path / "data" / RAW_CONFIG).is_dir():
        files = [str(f) for f in sorted((path / "data" / RAW_CONFIG).glob("test-*.parquet"))]
    else:
        raise UserError(f"--data winrate={path}: not a folder written by `vlfeedback build` (no README.md, no "
                        "data/raw/) nor a raw-config Parquet file")  # fmt: skip
    if not files:
        raise UserError(f"--data winrate={path} {NO_TEST_SPLIT}")
    return files


def load(path: Path) -> list[Item]:
    """Held-out prompts: the ``raw`` config's ``test`` split of a built folder, or one ``raw``-config Parquet."""
    import pyarrow.parquet as pq

    path = Path(path)
    rows = []
    for file in held_out_files(path):
        try:
            rows.extend(pq.read_table(file, columns=["id", "prompt", "image"]).to_pylist())
        except (KeyError, ValueError) as err:  # pyarrow: a column the file does not have
            raise UserError(f"{file}: no id/prompt/image columns; expected the raw config's columns") from err
    if not rows:
        raise UserError(f"--data winrate={path}: the held-out split has no rows")
    items = []
    for number, row in enumerate(rows):
        image = image_bytes_of(row["image"])
        if not row["prompt"] or row["id"] is None or image is None:
            raise UserError(f"{path}: row {number} lacks id/prompt/image; expected the raw config's columns")
        items.append(Item(str(row["id"]), row["prompt"], image_bytes=image))
    return items


def trained_on(adapter: str | Path | None) -> dict | None:
    """The ``dataset`` record (name, config, split, revision) of the run ``adapter`` comes from; None when it is
    not a run dir with a ``run_info.json`` (a Hub adapter, a served model name)."""
    info = Path(adapter) / RUN_INFO if adapter else None
    if info is None or not info.is_file():
        return None
    try:
        dataset = json.loads(info.read_text(encoding="utf-8")).get("dataset") or {}
    except (ValueError, AttributeError) as err:
        raise UserError(f"{info}: not a run_info.json ({err}); it names the data the adapter trained on") from err
    return dataset if dataset.get("name") else None


def trained_ids(dataset: dict, location: str) -> set[str] | None:
    """The prompt ids of the config and split a run trained on: a local folder of the recorded name whose data
    still has the recorded content digest (``run_info.json`` names a local folder, never locates it: ``--data``,
    its sibling of that name, or one in the working directory), or the same Hub dataset as ``--data`` at the
    recorded commit. None when they cannot be found; refused when ``--data`` is a folder of that name rebuilt
    since (which prompts the run saw cannot be told)."""
    from vlfeedback_kit.builders.inspect import _configs, _open_target, open_parquet
    from vlfeedback_kit.errors import hub_error, is_hub_error
    from vlfeedback_kit.training.dpo import local_dataset_key

    name, config, split = dataset["name"], dataset.get("config") or "pairs", dataset.get("split") or "train"
    revision = dataset.get("revision")
    where = f"{name} (config {config}, split {split})"
    if dataset.get("local") or Path(name).is_absolute():  # older run_info.json located the folder
        here = Path(location) if Path(location).is_dir() else Path(location).parent
        found = None
        for folder in dict.fromkeys((here, here.parent / Path(name).name, Path(name))):  # --data, its sibling, cwd
            try:
                if folder.is_dir() and local_dataset_key(folder, config) == revision:
                    found = folder
                    break
            except ValueError:  # the config is not declared there
                continue
        if found is None:
            if here.resolve().name != Path(name).name:
                return None
            raise UserError(f"the adapter trained on {where} as it was before a rebuild (its data was {revision}): "
                            "which of its prompts it saw cannot be told, so no item can be called held-out; "
                            "retrain on this build's `train` split")  # fmt: skip
        target, at = str(found), None
    elif location.partition("@")[0] == name:
        target, at = name, revision
    else:
        return None
    try:
        fs, root = _open_target(target, at)
        files = _configs(fs, root).get(config, {}).get(split, [])
        ids: set[str] = set()
        for file in files:
            with open_parquet(fs, file) as parquet:
                ids.update(str(i) for i in parquet.read(columns=["id"]).column("id").to_pylist())
    except Exception as err:
        if is_hub_error(err):
            raise hub_error(f"cannot read the ids the adapter trained on from {where}, to check the win-rate "
                            "items are held out", err) from err  # fmt: skip
        raise
    if not files:
        raise UserError(f"{where}, which the adapter trained on, declares no such files: cannot check the win-rate "
                        "items are held out")  # fmt: skip
    return ids


def refuse_trained(items: list[Item], location: str, adapter: str | Path | None) -> None:
    """Refuse win-rate items the adapter trained on: a win rate on training prompts is not held-out. Every item is
    refused rather than the overlap dropped: an overlap means the data under test is not the held-out split of the
    build the adapter trained on, and a smaller set silently standing for it would not be either."""
    dataset = trained_on(adapter) if items else None
    if dataset is None:
        return
    trained = trained_ids(dataset, location)
    overlap = [item.id for item in items if trained and item.id in trained]
    if overlap:
        raise UserError(
            f"--data winrate={location}: {len(overlap)} of {len(items)} items (first: {overlap[0]}) are prompts "
            f"{adapter} trained on ({dataset['name']}, config {dataset.get('config') or 'pairs'}, split "
            f"{dataset.get('split') or 'train'}); a win rate on them is not held-out: evaluate on the `test` split "
            "of the build it trained on (`vlfeedback build --eval-fraction`), or retrain on this build's `train` split"
        )
