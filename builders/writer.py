"""Streaming Parquet shards for Hub-ready configs: bounded memory, sane row groups, image bytes stored once."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from datasets import Features

DEFAULT_MAX_SHARD_BYTES = 500 * 1024**2
RAW_ROW_GROUP_ROWS = 100
PAIR_ROW_GROUP_ROWS = 500
DICTIONARY_PAGE_LIMIT = 256 * 1024**2


def image_byte_columns(features: Features) -> list[str]:
    """Parquet column paths holding image bytes (``image.bytes`` or ``images.list.element.bytes``)."""
    paths = []
    for name, feature in features.items():
        if type(feature).__name__ == "Image":
            paths.append(f"{name}.bytes")
        elif type(getattr(feature, "feature", None)).__name__ == "Image":
            paths.append(f"{name}.list.element.bytes")
    return paths


class ShardWriter:
    """Writes one split of one config as ``data/<config>/<split>-0000k-of-0000n.parquet``.

    Rows arrive in batches and leave in row groups of ``row_group_rows``; a new shard starts past
    ``max_shard_bytes``. With ``dedupe_images`` the image bytes are dictionary-encoded with a dictionary page large
    enough for a whole row group, so the pairs of one instruction (adjacent rows) store their shared image once.
    """

    def __init__(
        self,
        folder: Path,
        split: str,
        features: Features,
        row_group_rows: int,
        dedupe_images: bool = False,
        max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    ) -> None:
        self.folder, self.split, self.features = folder, split, features
        self.schema = features.arrow_schema
        self.row_group_rows, self.max_shard_bytes = row_group_rows, max_shard_bytes
        self.dictionary_columns = image_byte_columns(features) if dedupe_images else []
        self.rows = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._shards: list[Path] = []

    def write(self, table: pa.Table) -> None:
        """Queue a batch of rows; full row groups are written as they fill."""
        if table.num_rows == 0:
            return
        self._pending.append(table)
        self._pending_rows += table.num_rows
        self.rows += table.num_rows
        while self._pending_rows >= self.row_group_rows:
            merged = pa.concat_tables(self._pending)
            self._write_row_group(merged.slice(0, self.row_group_rows))
            rest = merged.slice(self.row_group_rows)
            self._pending, self._pending_rows = ([rest] if rest.num_rows else []), rest.num_rows

    def _open(self) -> pq.ParquetWriter:
        path = self.folder / f"{self.split}-{len(self._shards):05d}.parquet.partial"
        self._shards.append(path)
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.dictionary_columns:
            return pq.ParquetWriter(
                path,
                self.schema,
                use_dictionary=self.dictionary_columns,
                dictionary_pagesize_limit=DICTIONARY_PAGE_LIMIT,
                write_statistics=False,
            )
        return pq.ParquetWriter(path, self.schema, use_dictionary=True, write_statistics=False)

    def _write_row_group(self, table: pa.Table) -> None:
        if self._writer is None:
            self._writer = self._open()
        self._writer.write_table(table.cast(self.schema), row_group_size=table.num_rows)
        if self._shards[-1].stat().st_size >= self.max_shard_bytes:
            self._writer.close()
            self._writer = None

    def close(self) -> list[Path]:
        """Flush, close and give the shards their final ``-of-`` names; returns them (none for an empty split)."""
        if self._pending_rows:
            self._write_row_group(pa.concat_tables(self._pending))
            self._pending, self._pending_rows = [], 0
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        final = []
        for index, partial in enumerate(self._shards):
            target = self.folder / f"{self.split}-{index:05d}-of-{len(self._shards):05d}.parquet"
            partial.rename(target)
            final.append(target)
        return final
