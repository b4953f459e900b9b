"""`load_pairs`: the rows of a pairing config built from `raw` at load time, each image stored
once in the local cache instead of once per pair.

Run: pytest tests/test_load_pairs.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from release_factory import jpeg, row, write_release

from vlfeedback_kit.builders.build import BuildOptions, build
from vlfeedback_kit.builders.load_pairs import load_pairs
from vlfeedback_kit.builders.pairing import PRESETS
from vlfeedback_kit.cards.dataset import write_dataset_card
from vlfeedback_kit.errors import UserError

RATINGS = [(5, 5, 5), (3, 3, 4), (1, 2, 5), (2, 2, 2)]


def tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 instructions with distinct 96-px images, 6 pairs each, a held-out split (2 of 12) and an extra config."""
    root = tmp_path_factory.mktemp("load-pairs")
    rows = [row(f"svit-{i}", RATINGS) for i in range(12)]
    images = {r["id"]: jpeg((20 * i, 100, 200 - 10 * i), size=96) for i, r in enumerate(rows)}
    release = write_release(root / "release", rows, images=images)
    policies = {"best-vs-worst": PRESETS["best-vs-worst"]}
    build(
        BuildOptions(
            source=str(release),
            out_dir=root / "vlf",
            policies=policies,
            eval_fraction=0.3,
            progress=False,
            card=write_dataset_card,
        )
    )
    return root / "vlf"


@pytest.mark.parametrize("config", ["pairs", "best-vs-worst"])
def test_same_rows_as_the_published_config_with_each_image_cached_once(folder: Path, tmp_path: Path, config) -> None:
    from datasets import load_dataset

    published = load_dataset(str(folder), config, cache_dir=str(tmp_path / "published"))
    built = load_pairs(str(folder), config, cache_dir=str(tmp_path / "built"))
    assert set(built) == set(published) == {"train", "test"}
    for split, reference in published.items():
        ours = built[split]
        assert ours.features == reference.features and ours.num_rows == reference.num_rows
        text = [c for c in reference.column_names if c != "images"]
        assert ours.select_columns(text).to_list() == reference.select_columns(text).to_list()
        for mine, theirs in zip(ours, reference):
            assert np.array_equal(np.asarray(mine["images"][0]), np.asarray(theirs["images"][0]))
    images = sorted(p.name for p in (tmp_path / "built").rglob("*.jpg"))
    assert images == sorted(f"svit-{i}.jpg" for i in range(12))  # one file per instruction, not per pair
    if config == "pairs":  # 6 pairs share each image: the default load stores it 6 times
        assert tree_bytes(tmp_path / "built") < 0.5 * tree_bytes(tmp_path / "published")


def test_a_policy_spec_one_split_and_errors(folder: Path, tmp_path: Path) -> None:
    train = load_pairs(str(folder), "gap:strategy=best-vs-all,min_margin=2", split="train", cache_dir=str(tmp_path))
    assert len(train) > 0 and min(train["margin"]) >= 2
    again = load_pairs(str(folder), "gap:strategy=best-vs-all,min_margin=2", split="train", cache_dir=str(tmp_path))
    assert again.cache_files == train.cache_files  # reused, not rebuilt
    with pytest.raises(UserError, match=r"neither a config of .* \(pairs, best-vs-worst\)"):
        load_pairs(str(folder), "nope", cache_dir=str(tmp_path))
    with pytest.raises(UserError, match="no split 'validation'"):
        load_pairs(str(folder), "pairs", split="validation", cache_dir=str(tmp_path))


def test_from_a_hub_release_at_a_tag(folder: Path, hub, tmp_path: Path, monkeypatch) -> None:
    import datasets.config
    from huggingface_hub import HfApi

    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", hub.url)  # read at import, like huggingface_hub's

    api = HfApi(endpoint=hub.url, token="hf_test")
    api.create_repo("org/vlf", repo_type="dataset")
    api.upload_folder(folder_path=folder, repo_id="org/vlf", repo_type="dataset")
    api.create_tag("org/vlf", tag="v1.0.0", repo_type="dataset")
    train = load_pairs("org/vlf", "best-vs-worst", revision="v1.0.0", split="train", cache_dir=str(tmp_path))
    assert train.num_rows == 10 and train[0]["images"][0].format == "JPEG"


def crafted_copy(folder: Path, target: Path, evil_id: str) -> Path:
    """A copy of the built folder whose ``raw`` train shard names its first row ``evil_id`` (what a hand-edited or
    malicious release could hold: the kit's build refuses such ids, a Hub repo need not have been built by it)."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    shutil.copytree(folder, target)
    (shard,) = (target / "data" / "raw").glob("train-*.parquet")
    table = pq.read_table(shard)
    ids = table.column("id").to_pylist()
    table = table.set_column(table.schema.get_field_index("id"), "id", pa.array([evil_id, *ids[1:]]))
    pq.write_table(table, shard)
    return target


def escapes(outside: Path) -> list[str]:
    """``../`` far enough to reach the file system's root, then down to ``outside/x``; and ``outside/y`` as is."""
    return ["../" * 40 + str(outside / "x").lstrip("/"), str(outside / "y")]


@pytest.mark.parametrize("kind", ["relative", "absolute"])
def test_a_raw_id_that_is_a_path_is_refused_and_nothing_is_written_outside(folder: Path, tmp_path: Path, kind) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    evil = escapes(outside)[kind == "absolute"]
    crafted = crafted_copy(folder, tmp_path / "root" / "vlf", evil)
    with pytest.raises(UserError, match=r"raw/train row 0: id .* cannot name a file"):
        load_pairs(str(crafted), "pairs", cache_dir=str(tmp_path / "root" / "cache"))
    assert list(outside.iterdir()) == []


def test_a_hub_release_with_a_path_id_is_refused(folder: Path, hub, tmp_path: Path, monkeypatch) -> None:
    import datasets.config
    from huggingface_hub import HfApi

    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", hub.url)
    outside = tmp_path / "outside"
    outside.mkdir()
    api = HfApi(endpoint=hub.url, token="hf_test")
    for n, evil in enumerate(escapes(outside)):
        crafted = crafted_copy(folder, tmp_path / f"crafted-{n}", evil)
        api.create_repo(f"org/evil-{n}", repo_type="dataset")
        api.upload_folder(folder_path=crafted, repo_id=f"org/evil-{n}", repo_type="dataset")
        with pytest.raises(UserError, match=r"org/evil-\d raw/train row 0: id .* cannot name a file"):
            load_pairs(f"org/evil-{n}", "pairs", cache_dir=str(tmp_path / "root" / f"cache-{n}"))
    assert list(outside.iterdir()) == []
