"""Streaming Parquet shards for Hub-ready configs: bounded memory, sane row groups, image bytes stored once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Features

DEFAULT_MAX_SHARD_BYTES = 500 * 1024**2
RAW_ROW_GROUP_ROWS = 100
PAIR_ROW_GROUP_ROWS = 500
DICTIONARY_PAGE_LIMIT = 256 * 1024**2


def leaf_columns(schema: pa.Schema) -> list[str]:
    """Parquet leaf column paths of an Arrow schema (lists appear as ``name.list.element``)."""

    def walk(prefix: str, data_type: pa.DataType) -> list[str]:
        if pa.types.is_struct(data_type):
            return [p for f in data_type for p in walk(f"{prefix}.{f.name}", f.type)]
        if pa.types.is_list(data_type) or pa.types.is_large_list(data_type):
            return walk(f"{prefix}.list.element", data_type.value_type)
        return [prefix]

    return [p for f in schema for p in walk(f.name, f.type)]


def image_byte_columns(features: Features) -> list[str]:
    """Parquet column paths holding image bytes (``image.bytes`` or ``images.list.element.bytes``)."""
    paths = []
    for name, feature in features.items():
        if type(feature).__name__ == "Image":
            paths.append(f"{name}.bytes")
        elif type(getattr(feature, "feature", None)).__name__ == "Image":
            paths.append(f"{name}.list.element.bytes")
    return paths


def compact_shared_images(table: pa.Table, column: str = "images") -> pa.Table:
    """Keep only the dictionary entries (images) a slice of pairs uses, so a row group stores each image once."""
    images = table.column(column).combine_chunks()
    values = images.flatten()
    image_bytes, paths = values.flatten()
    indices = image_bytes.indices.to_numpy(zero_copy_only=False)
    used, remapped = np.unique(indices, return_inverse=True)
    compact = pa.DictionaryArray.from_arrays(
        pa.array(remapped.astype(np.int32)), image_bytes.dictionary.take(pa.array(used))
    )
    offsets = images.offsets.to_numpy()
    rebuilt = pa.ListArray.from_arrays(
        pa.array(offsets - offsets[0], pa.int32()),
        pa.StructArray.from_arrays([compact, paths], fields=list(values.type)),
    )
    return table.set_column(table.schema.get_field_index(column), table.schema.field(column), rebuilt)


def file_digest(path: Path, length: int = 12) -> str:
    """A short content digest of a file (xxh3-128, streamed)."""
    import xxhash

    digest = xxhash.xxh3_128()
    with path.open("rb") as stream:
        while chunk := stream.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()[:length]


class ShardWriter:
    """Writes one split of one config as ``data/<config>/<split>-0000k-of-0000n-<digest>.parquet``.

    Rows arrive in batches and leave in row groups of at most ``row_group_rows``; a new shard starts past
    ``max_shard_bytes``. With ``shared_images`` the ``images`` column arrives dictionary-encoded (the pairs of one
    instruction index one image, see ``pairing.materialize_pairs``) and each row group keeps exactly the
    images its rows use: Parquet stores every image once per row group, and nothing is copied or hashed.
    """

    def __init__(
        self,
        folder: Path,
        split: str,
        features: Features,
        row_group_rows: int,
        schema: pa.Schema | None = None,
        shared_images: bool = False,
        max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    ) -> None:
        self.folder, self.split, self.features = folder, split, features
        self.schema = schema or features.arrow_schema
        self.row_group_rows, self.max_shard_bytes = row_group_rows, max_shard_bytes
        self.shared_images = shared_images
        self.rows = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._shards: list[Path] = []

    def write(self, table: pa.Table) -> None:
        """Queue a batch of rows; full row groups are written as they fill."""
        if table.num_rows == 0:
            return
        self.rows += table.num_rows
        if self.shared_images:  # row groups never span batches: their dictionaries differ
            for start in range(0, table.num_rows, self.row_group_rows):
                self._write_row_group(compact_shared_images(table.slice(start, self.row_group_rows)))
            return
        self._pending.append(table)
        self._pending_rows += table.num_rows
        while self._pending_rows >= self.row_group_rows:
            merged = pa.concat_tables(self._pending)
            self._write_row_group(merged.slice(0, self.row_group_rows))
            rest = merged.slice(self.row_group_rows)
            self._pending, self._pending_rows = ([rest] if rest.num_rows else []), rest.num_rows

    def _open(self) -> pq.ParquetWriter:
        path = self.folder / f"{self.split}-{len(self._shards):05d}.parquet.partial"
        self._shards.append(path)
        self.folder.mkdir(parents=True, exist_ok=True)
        # Unique images gain nothing from a dictionary and cost a hash of every byte: encode them plain.
        images = set(image_byte_columns(self.features))
        dictionary = [c for c in leaf_columns(self.schema) if c not in images or self.shared_images]
        if not self.shared_images:
            return pq.ParquetWriter(path, self.schema, use_dictionary=dictionary, write_statistics=False)
        # The stored Arrow schema would say "dictionary", which makes readers (datasets included) ignore the
        # Image features; without it readers see plain binary, and the features travel as key-value metadata.
        writer = pq.ParquetWriter(
            path,
            self.schema.remove_metadata(),
            store_schema=False,
            use_dictionary=dictionary,
            dictionary_pagesize_limit=DICTIONARY_PAGE_LIMIT,
            write_statistics=False,
        )
        writer.add_key_value_metadata({"huggingface": self.features.arrow_schema.metadata[b"huggingface"].decode()})
        return writer

    def _write_row_group(self, table: pa.Table) -> None:
        if self._writer is None:
            self._writer = self._open()
        self._writer.write_table(table.cast(self._writer.schema), row_group_size=table.num_rows)
        if self._shards[-1].stat().st_size >= self.max_shard_bytes:
            self._writer.close()
            self._writer = None

    def close(self) -> list[Path]:
        """Flush, close and give the shards their final names; returns them (none for an empty split).

        A name is ``<split>-0000k-of-0000n-<digest>.parquet`` with a digest of the file's bytes: ``datasets`` keys
        its cache of a local folder on the card's ``configs`` (not on file contents), so content-addressed names
        listed in the card are what makes a rebuilt folder load fresh instead of from a stale cache.
        """
        if self._pending_rows:
            self._write_row_group(pa.concat_tables(self._pending))
            self._pending, self._pending_rows = [], 0
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        final = []
        for index, partial in enumerate(self._shards):
            digest = file_digest(partial)
            target = self.folder / f"{self.split}-{index:05d}-of-{len(self._shards):05d}-{digest}.parquet"
            partial.rename(target)
            final.append(target)
        return final
