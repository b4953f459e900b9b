"""Win-rate data is the held-out split: only the ``raw`` config's ``test`` split (local folder or Hub id), and never
prompts the adapter trained on, as its ``run_info.json`` records them."""

import json
import shutil

import pyarrow.parquet as pq
import pytest
from release_factory import row, write_release

from vlfeedback_kit.builders.build import BuildOptions, build
from vlfeedback_kit.cards.dataset import write_dataset_card
from vlfeedback_kit.errors import UserError
from vlfeedback_kit.eval import winrate
from vlfeedback_kit.eval.runner import load_items
from vlfeedback_kit.training.dpo import local_dataset_key

RATINGS = [(5, 5, 5), (3, 3, 4), (1, 2, 5), (2, 2, 2)]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_release(tmp_path_factory.mktemp("release"), [row(f"svit-{i}", RATINGS) for i in range(40)])


def built(release, out, **options):
    """A folder as ``vlfeedback build`` writes it, card (and its ``configs`` block) included."""
    build(BuildOptions(source=str(release), out_dir=out, progress=False, card=write_dataset_card, overwrite=True,
                       **options))  # fmt: skip
    return out


def raw_ids(folder, split):
    from datasets import load_dataset

    return list(load_dataset(str(folder), "raw", split=split)["id"])


def run_dir(path, dataset, config="pairs", split="train", revision=None):
    """A run dir's record of its training data, as ``training/outputs.py`` writes it."""
    path.mkdir(parents=True, exist_ok=True)
    revision = revision or local_dataset_key(dataset, config)
    record = {"name": dataset.name, "local": True, "config": config, "split": split, "revision": revision}
    (path / "run_info.json").write_text(json.dumps({"base_model": "base", "dataset": record}))
    return path


def test_the_readme_build_has_no_test_split_and_says_to_rebuild_with_eval_fraction(release, tmp_path):
    folder = built(release, tmp_path / "vlfeedback")
    cache = folder / ".ref_logps"
    cache.mkdir()
    shutil.copy(next((folder / "data" / "pairs").glob("*.parquet")), cache / "logps.parquet")
    with pytest.raises(UserError, match=r"no held-out split .*rebuild with `vlfeedback build \.\.\. --eval-fraction"):
        load_items("winrate", str(folder))


def test_only_the_declared_raw_test_split_is_read(release, tmp_path):
    folder = built(release, tmp_path / "vlfeedback", eval_fraction=0.25, eval_seed=1)
    train = next((folder / "data" / "raw").glob("train-*.parquet"))
    shutil.copy(train, folder / "data" / "raw" / "test-00000-of-00001-000000000000.parquet")  # not in the card
    items = load_items("winrate", str(folder))
    assert [item.id for item in items] == raw_ids(folder, "test") and 0 < len(items) < 40
    assert not set(raw_ids(folder, "train")) & {item.id for item in items}
    assert all(item.image_data()[:2] == b"\xff\xd8" for item in items)


def test_a_hub_id_reads_its_test_split_or_says_there_is_none(release, tmp_path, hub):
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.url, token="hf_test")
    held = built(release, tmp_path / "held", eval_fraction=0.25, eval_seed=1)
    plain = built(release, tmp_path / "plain")
    for name, folder in (("org/held", held), ("org/plain", plain)):
        api.create_repo(name, repo_type="dataset")
        api.upload_folder(folder_path=folder, repo_id=name, repo_type="dataset")
    assert [item.id for item in load_items("winrate", "org/held")] == raw_ids(held, "test")
    with pytest.raises(UserError, match="--eval-fraction"):
        load_items("winrate", "org/plain")


def test_an_adapter_trained_on_the_builds_train_split_passes(release, tmp_path):
    folder = built(release, tmp_path / "vlfeedback", eval_fraction=0.25, eval_seed=1)
    items = winrate.load(folder)
    winrate.refuse_trained(items, str(folder), str(run_dir(tmp_path / "run", folder)))
    winrate.refuse_trained(items, str(folder), None)  # no adapter, no claim to check
    winrate.refuse_trained(items, str(folder), str(tmp_path / "org/served-name"))  # no run_info: nothing recorded


def test_an_adapter_trained_on_the_test_prompts_is_refused(release, tmp_path):
    folder = built(release, tmp_path / "vlfeedback", eval_fraction=0.25, eval_seed=1)
    items = winrate.load(folder)
    with pytest.raises(UserError, match=rf"{len(items)} of {len(items)} items .* not held-out"):
        winrate.refuse_trained(items, str(folder), str(run_dir(tmp_path / "run", folder, split="test")))


def test_an_adapter_trained_on_the_readme_build_is_refused_on_a_later_held_out_build(release, tmp_path):
    first = built(release, tmp_path / "vlfeedback")
    adapter = str(run_dir(tmp_path / "run", first))
    second = built(release, tmp_path / "vlfeedback-eval", eval_fraction=0.25, eval_seed=1)
    items = winrate.load(second)
    with pytest.raises(UserError, match=rf"{len(items)} of {len(items)} items \(first: svit-\d+\) are prompts"):
        winrate.refuse_trained(items, str(second), adapter)
    built(release, first, eval_fraction=0.25, eval_seed=1)  # the README's folder, rebuilt in place
    with pytest.raises(UserError, match="as it was before a rebuild .* cannot be told"):
        winrate.refuse_trained(winrate.load(first), str(first), adapter)


def test_an_adapter_trained_on_the_same_hub_dataset_is_checked_at_its_commit(release, tmp_path, hub):
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.url, token="hf_test")
    folder = built(release, tmp_path / "held", eval_fraction=0.25, eval_seed=1)
    api.create_repo("org/held", repo_type="dataset")
    commit = api.upload_folder(folder_path=folder, repo_id="org/held", repo_type="dataset").oid
    items = load_items("winrate", "org/held")
    for split in ("train", "test"):
        path = tmp_path / split
        path.mkdir()
        record = {"name": "org/held", "config": "pairs", "split": split, "revision": commit}
        (path / "run_info.json").write_text(json.dumps({"dataset": record}))
    winrate.refuse_trained(items, "org/held", str(tmp_path / "train"))
    with pytest.raises(UserError, match=rf"{len(items)} of {len(items)} items"):
        winrate.refuse_trained(items, "org/held@main", str(tmp_path / "test"))


def test_a_parquet_file_without_the_raw_columns_is_one_line(tmp_path):
    import pyarrow as pa

    pq.write_table(pa.table({"question": ["q"]}), tmp_path / "other.parquet")
    with pytest.raises(UserError, match="no id/prompt/image columns"):
        winrate.load(tmp_path / "other.parquet")


def test_eval_run_refuses_a_training_set_win_rate_before_loading_the_model(release, tmp_path, monkeypatch):
    from vlfeedback_kit import serving
    from vlfeedback_kit.eval import runner
    from vlfeedback_kit.eval.judging import JudgeConfig

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the held-out check")

    monkeypatch.setattr(serving, "load", no_load)
    folder = built(release, tmp_path / "vlfeedback", eval_fraction=0.25, eval_seed=1)
    judge = JudgeConfig("judge-x", "http://127.0.0.1:9/v1", dry_run=True)
    adapter = str(run_dir(tmp_path / "run", folder, split="test"))
    options = runner.RunOptions(["winrate"], {"winrate": str(folder)}, tmp_path / "out", model="base",
                                adapter=adapter, compare_base=True, judge=judge, progress=False)  # fmt: skip
    with pytest.raises(UserError, match="not held-out"):
        runner.run(options)
