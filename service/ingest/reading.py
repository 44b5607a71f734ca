"""Reading an imported logs file chunk by chunk: CSV (``.csv``, ``.csv.gz``), Parquet or a data frame.

Parquet ``list<float>`` state columns arrive as one (n, d) array per chunk, without per-row objects;
everything else is checked cell by cell by :mod:`service.ingest.validation`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from service.errors import InvalidInputError
from service.store.features import FEATURE_DTYPE


def _arrow_states(column: Any) -> np.ndarray | None:
    """A Parquet ``list<float>`` state column as one (n, d) float32 array without per-row objects, or
    None when it has nulls or ragged rows (the row-by-row path then names the bad row)."""
    import pyarrow as pa

    if column.null_count or not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
        return None
    n = len(column)
    offsets = column.offsets.to_numpy()
    if n == 0 or not (np.diff(offsets) == offsets[1] - offsets[0]).all():
        return None
    values = column.flatten()  # honours the array's slice offset
    if values.null_count or not pa.types.is_floating(values.type):
        return None
    width = int(offsets[1] - offsets[0])
    return values.to_numpy(zero_copy_only=False).astype(FEATURE_DTYPE, copy=False).reshape(n, width)


def iter_frames(
    source: str | Path | pd.DataFrame, chunk_rows: int
) -> tuple[Iterator[tuple[pd.DataFrame, np.ndarray | None]], int | None]:
    """Chunks of the source (with their states as one array where the file stores them so) and, where
    cheap to know, its row count (for the progress bar)."""
    if isinstance(source, pd.DataFrame):
        frame = source
        chunks = ((frame.iloc[i : i + chunk_rows], None) for i in range(0, len(frame), chunk_rows))
        return chunks, len(frame)
    path = Path(source)
    if path.suffix.lower() in {".parquet", ".pq"}:
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow's ArrowInvalid and friends
            raise InvalidInputError(f"{path}: not a readable Parquet file ({exc})", field="path") from exc

        def parquet_chunks() -> Iterator[tuple[pd.DataFrame, np.ndarray | None]]:
            for batch in parquet.iter_batches(batch_size=chunk_rows):
                names = batch.schema.names
                states = _arrow_states(batch.column(names.index("state"))) if "state" in names else None
                if states is None:
                    yield batch.to_pandas(), None
                    continue
                # the state column becomes a placeholder; its values travel as one array
                frame = batch.drop_columns(["state"]).to_pandas()
                frame["state"] = None
                yield frame, states

        return parquet_chunks(), parquet.metadata.num_rows
    if path.suffix.lower() in {".csv", ".gz"} or path.name.endswith(".csv.gz"):
        try:
            reader = pd.read_csv(path, chunksize=chunk_rows, dtype={"session_id": str, "item_id": str})
        except pd.errors.EmptyDataError as exc:
            raise InvalidInputError(f"{path} is empty: no header row", field="path") from exc
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"{path}: not a readable CSV file ({exc})", field="path") from exc

        def csv_chunks() -> Iterator[tuple[pd.DataFrame, np.ndarray | None]]:
            try:
                for frame in reader:
                    yield frame, None
            except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError) as exc:
                raise InvalidInputError(f"{path}: not a readable CSV file ({exc})", field="path") from exc

        return csv_chunks(), None
    raise InvalidInputError(f"unsupported file type {path.suffix!r}: use .csv or .parquet", field="path")


def source_name(source: str | Path | pd.DataFrame) -> str:
    return "the imported data frame" if isinstance(source, pd.DataFrame) else str(source)
