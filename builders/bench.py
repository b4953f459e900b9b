"""Dataset-building benchmark: ``build`` throughput and memory on a scaled synthetic release, and 80K pair selection.

    python -m vlfeedback_kit.builders.bench --rows 20000 --rows 5000 --pair-instructions 80000
    python -m vlfeedback_kit.builders.bench --cache-only --cache-instructions 300

For each ``--rows`` value it writes a release in the original layout (realistic rows: 4 responses of 100–300 words
and 12 rationales; JPEGs of ~40 KB), runs ``vlfeedback build`` in a child process and reports rows/s, input MB/s
and the child's peak RSS — comparing two sizes shows whether memory grows with the input. Then it times the
``all-pairs`` selection (and the materialisation of TRL rows, images excluded) for ``--pair-instructions``
instructions × 4 responses. First it measures the local ``datasets`` cache that loading ``raw``, ``pairs`` and
``load_pairs`` leaves, on the built sample. Prints Markdown tables for BENCHMARKS.md and appends the results, with
the commit, versions, device and command, to ``benchmarks/results/builders.bench.jsonl``
(:mod:`vlfeedback_kit.benchlog`).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vlfeedback_kit.benchlog import Log, add_results_dir_argument
from vlfeedback_kit.cli import Parser

WORDS = [
    "the",
    "a",
    "image",
    "shows",
    "red",
    "blue",
    "green",
    "circle",
    "square",
    "triangle",
    "two",
    "three",
    "left",
    "right",
    "of",
    "in",
    "on",
    "with",
    "and",
    "is",
    "are",
]
ORIGINAL_ASPECTS = ("Helpfulness", "Ethical Considerations", "Visual Faithfulness")


def synthetic_jpegs(count: int, seed: int = 0, target_bytes: int = 40_000) -> list[bytes]:
    """Distinct 448×448 JPEGs of about ``target_bytes`` each (textured noise at a tuned quality)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        base = rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)
        pixels = np.asarray(Image.fromarray(base).resize((448, 448), Image.BICUBIC), dtype=np.int16)
        pixels = np.clip(pixels + rng.integers(-8, 8, pixels.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=70)
        images.append(buffer.getvalue())
    mean = float(np.mean([len(b) for b in images]))
    print(f"synthetic JPEGs: {count} distinct, mean {mean / 1e3:.1f} KB ({mean / target_bytes:.2f}× target)")
    return images


def _text(rng: np.random.Generator, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(low, high))))


def write_synthetic_release(folder: Path, rows: int, images: list[bytes], seed: int = 0) -> int:
    """A release in the original layout with ``rows`` realistic rows; returns the input size in bytes."""
    rng = np.random.default_rng(seed)
    image_dir = folder / "merged_images"
    image_dir.mkdir(parents=True, exist_ok=True)
    total = 0
    with (folder / "vlfeedback_80k.jsonl").open("w") as out:
        for i in range(rows):
            row_id = f"svit-conversation-{i}"
            models = [f"model-{m}" for m in rng.choice(12, size=4, replace=False)]
            completions = [
                {
                    "annotations": {
                        aspect: {"Rating": str(int(rng.integers(1, 6))), "Rationale": _text(rng, 20, 50)}
                        for aspect in ORIGINAL_ASPECTS
                    },
                    "model": model,
                    "response": _text(rng, 100, 300),
                }
                for model in models
            ]
            line = json.dumps(
                {"id": row_id, "prompt": _text(rng, 10, 40), "models": models, "completions": completions}
            )
            out.write(line + "\n")
            image = images[i % len(images)]
            (image_dir / f"{row_id}.jpg").write_bytes(image)
            total += len(line) + 1 + len(image)
    return total


_CHILD = (
    "import resource, sys; from vlfeedback_kit.cli import main; rc = main(sys.argv[1:]); "
    "print('MAXRSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)"
)


def bench_build(rows: int, images: list[bytes], workdir: Path, extra: list[str]) -> dict:
    """Run ``vlfeedback build`` in a child process on a fresh synthetic release of ``rows`` rows."""
    release = workdir / f"release-{rows}"
    if not release.exists():
        input_bytes = write_synthetic_release(release, rows, images)
    else:
        input_bytes = sum(p.stat().st_size for p in release.rglob("*") if p.is_file())
    out = workdir / f"built-{rows}"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, "build", "--source", str(release), "--out", str(out), "--quiet", *extra],
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    peak_kib = int(done.stderr.rsplit("MAXRSS_KIB", 1)[1])
    report = json.loads((out / "build_report.json").read_text())
    size = {c: sum(p.stat().st_size for p in (out / "data" / c).glob("*.parquet")) for c in report["splits"]}
    return {
        "rows": rows,
        "seconds_total": round(elapsed, 2),
        "seconds_build": report["seconds"],
        "rows_per_s": round(rows / report["seconds"], 0),
        "input_MB_per_s": round(input_bytes / 1e6 / report["seconds"], 1),
        "peak_rss_MiB": round(peak_kib / 1024),
        "parquet_MB": {c: round(v / 1e6, 1) for c, v in size.items()},
        "pairs_over_raw_bytes": round(size["pairs"] / size["raw"], 3),
        "pairs": report["splits"]["pairs"]["train"],
    }


def bench_pairs(instructions: int, seed: int = 0) -> dict:
    """Time ``all-pairs`` selection and TRL-row materialisation for ``instructions`` × 4 responses."""
    import pyarrow as pa

    from vlfeedback_kit.builders.features import ASPECTS, RAW_FEATURES
    from vlfeedback_kit.builders.pairing import PairingPolicy, materialize_pairs, response_table, select_pairs

    rng = np.random.default_rng(seed)
    n = instructions * 4
    ratings = rng.integers(1, 6, (n, 3)).astype(np.int8)
    ratings_null = rng.random((n, 3)) < 0.01
    rating_arrays = [pa.array(ratings[:, a], mask=ratings_null[:, a]) for a in range(3)]
    rationale = pa.array(["."] * n)
    annotations = pa.StructArray.from_arrays(
        [pa.StructArray.from_arrays([r, rationale], names=["Rating", "Rationale"]) for r in rating_arrays],
        names=list(ASPECTS),
    )
    responses = pa.array([f"response {i % 50_000} words words words" for i in range(n)])
    models = pa.array([f"model-{i % 12}" for i in range(n)])
    completion = pa.StructArray.from_arrays(
        [models, responses, annotations], names=["model", "response", "annotations"]
    )
    offsets = pa.array(np.arange(instructions + 1, dtype=np.int32) * 4)
    columns = {
        "id": pa.array([f"svit-{i}" for i in range(instructions)]),
        "source": pa.array(["SVIT"] * instructions),
        "image": pa.StructArray.from_arrays(
            [pa.array([b"x"] * instructions), pa.nulls(instructions, pa.string())], names=["bytes", "path"]
        ),
        "prompt": pa.array(["prompt"] * instructions),
        "models": pa.ListArray.from_arrays(offsets, models),
        "completions": pa.ListArray.from_arrays(offsets, completion),
    }
    schema = RAW_FEATURES.arrow_schema
    table = pa.Table.from_arrays([columns[name] for name in schema.names], schema=schema)
    policy = PairingPolicy()
    started = time.perf_counter()
    selection = select_pairs(response_table(table, policy.seed), policy)
    selected = time.perf_counter() - started
    started = time.perf_counter()
    pairs = materialize_pairs(table, selection)
    materialized = time.perf_counter() - started
    return {
        "instructions": instructions,
        "pairs": pairs.num_rows,
        "select_seconds": round(selected, 3),
        "materialize_seconds": round(materialized, 3),
    }


_CACHE_CHILD = """
import json, sys
from datasets import load_dataset
folder, way = sys.argv[1], sys.argv[2]
if way == "load_pairs":
    from vlfeedback_kit.builders.load_pairs import load_pairs
    dataset = load_pairs(folder, "pairs")
else:
    dataset = load_dataset(folder, way)
print(json.dumps({split: d.num_rows for split, d in dataset.items()}))
"""


def tree_bytes(folder: Path) -> int:
    """Bytes of every file under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def bench_cache(instructions: int, workdir: Path) -> dict:
    """Local ``datasets`` cache bytes of ``pairs`` and ``raw`` loaded with ``load_dataset``, and of ``pairs`` built by
    ``load_pairs`` (images once, as files), each into a fresh cache from the built sample."""
    from vlfeedback_kit.builders.build import BuildOptions, build
    from vlfeedback_kit.builders.sample import write_sample
    from vlfeedback_kit.cards.dataset import write_dataset_card

    release, folder = workdir / f"sample-{instructions}", workdir / f"sample-{instructions}-built"
    if not folder.is_dir():
        write_sample(release, num_instructions=instructions)
        build(BuildOptions(source=str(release), out_dir=folder, progress=False, card=write_dataset_card))
    parquet = {c: tree_bytes(folder / "data" / c) for c in ("raw", "pairs")}
    result: dict = {"instructions": instructions, "parquet_MB": {c: round(v / 1e6, 2) for c, v in parquet.items()}}
    for way in ("raw", "pairs", "load_pairs"):
        cache = workdir / f"cache-{instructions}-{way}"
        shutil.rmtree(cache, ignore_errors=True)
        env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", _CACHE_CHILD, str(folder), way], env=env, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise SystemExit(done.stderr)
        result[way] = {
            "cache_MB": round(tree_bytes(cache) / 1e6, 2),
            "seconds": round(time.perf_counter() - started, 1),
            "rows": json.loads(done.stdout.strip().splitlines()[-1]),
        }
        shutil.rmtree(cache, ignore_errors=True)
    raw = result["raw"]["cache_MB"]
    result["over_raw_cache"] = {way: round(result[way]["cache_MB"] / raw, 2) for way in ("pairs", "load_pairs")}
    return result


def make_parser() -> argparse.ArgumentParser:
    """The benchmark's flags."""
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, action="append", help="release sizes to build (default 5000 and 20000)")
    parser.add_argument("--distinct-images", type=int, default=400, help="distinct JPEGs cycled through the rows")
    parser.add_argument("--pair-instructions", type=int, default=80_000)
    parser.add_argument("--workdir", type=Path, help="keep the synthetic releases here (default: a temp dir)")
    parser.add_argument(
        "--cache-instructions",
        type=int,
        default=300,
        help="sample size for the local cache of pairs vs raw vs load_pairs (default 300; 0 skips it)",
    )
    parser.add_argument("--cache-only", action="store_true", help="run only the local cache measurement")
    parser.add_argument(
        "--build-args", default="", help="extra flags for `vlfeedback build`, e.g. '--verify-images decode'"
    )
    add_results_dir_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark, print the results as JSON and a Markdown table, and append them to the results log."""
    args = make_parser().parse_args(argv)
    log = Log("vlfeedback_kit.builders.bench", argv, args.results_dir)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vlf-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} CPUs; workdir {workdir}")
    cache = bench_cache(args.cache_instructions, workdir) if args.cache_instructions else None
    if cache:
        print(json.dumps({"cache": cache}, indent=2))
        print("\n| way | local cache MB | × raw's | load s |\n|---|---|---|---|")
        for way in ("raw", "pairs", "load_pairs"):
            ratio = cache["over_raw_cache"].get(way, 1.0)
            print(f"| {way} | {cache[way]['cache_MB']} | {ratio} | {cache[way]['seconds']} |")
    if args.cache_only:
        log.append({"cache": cache})
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        return
    images = synthetic_jpegs(args.distinct_images)
    results = [bench_build(rows, images, workdir, args.build_args.split()) for rows in (args.rows or [5000, 20000])]
    pairs = bench_pairs(args.pair_instructions)
    print(json.dumps({"build": results, "pairs": pairs}, indent=2))
    log.append({"cache": cache, "build": results, "pairs": pairs})
    print("\n| rows | build s | rows/s | input MB/s | peak RSS MiB | raw MB | pairs MB | pairs/raw |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['rows']:,} | {r['seconds_build']} | {r['rows_per_s']:,.0f} | {r['input_MB_per_s']} | "
            f"{r['peak_rss_MiB']} | {r['parquet_MB']['raw']} | {r['parquet_MB']['pairs']} | "
            f"{r['pairs_over_raw_bytes']} |"
        )
    print(
        f"\nall-pairs for {pairs['instructions']:,} × 4: select {pairs['select_seconds']} s, "
        f"materialize {pairs['materialize_seconds']} s, {pairs['pairs']:,} pairs"
    )
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
