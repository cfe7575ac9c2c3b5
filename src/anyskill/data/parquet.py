"""Arrow/parquet conversion between numpy columns and LeRobot's frame tables.

A vector feature ``[D]`` is a fixed-size list column (Hugging Face ``List(length=D)``), a
``[1]`` feature a plain scalar column, as LeRobot stores them. The Hugging Face feature
description goes into the schema metadata so ``datasets`` reads the columns back with the
same types.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from anyskill.data.format import CorruptFileError, Feature, SchemaMismatchError, atomic_write


def arrow_type(f: Feature) -> pa.DataType:
    scalar = pa.from_numpy_dtype(np.dtype(f.dtype))
    return scalar if f.is_scalar else pa.list_(scalar, f.shape[0])


def hf_feature(f: Feature) -> dict:
    value = {"dtype": f.dtype, "_type": "Value"}
    if f.is_scalar:
        return value
    return {"feature": value, "length": f.shape[0], "_type": "List"}


def to_arrow(f: Feature, x: np.ndarray) -> pa.Array:
    """``x [N]`` or ``[N, D]`` as an arrow column of ``f``'s type."""
    x = np.ascontiguousarray(x, dtype=np.dtype(f.dtype))
    if f.is_scalar:
        return pa.array(x.reshape(-1))
    flat = pa.array(x.reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, f.shape[0])


def to_numpy(f: Feature, col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """An arrow column back to ``[N]`` (scalars) or ``[N, D]``."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    dtype = np.dtype(f.dtype)
    if f.is_scalar:
        return col.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    if pa.types.is_fixed_size_list(col.type):
        values = col.flatten() if col.offset else col.values
        return (
            values.to_numpy(zero_copy_only=False).astype(dtype, copy=False).reshape(-1, f.shape[0])
        )
    # variable-length lists (some writers): every row must still have D entries
    arr = np.asarray(col.to_pylist(), dtype=dtype)
    return arr.reshape(-1, f.shape[0])


def frame_schema(features: dict[str, Feature]) -> pa.Schema:
    fields = [pa.field(k, arrow_type(f)) for k, f in features.items() if not f.is_video]
    hf = {"info": {"features": {k: hf_feature(f) for k, f in features.items() if not f.is_video}}}
    return pa.schema(fields, metadata={"huggingface": json.dumps(hf)})


def _is_float(t: pa.DataType) -> bool:
    while pa.types.is_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_large_list(t):
        t = t.value_type
    return pa.types.is_floating(t)


def write_table(path: Path, table: pa.Table, durable: bool = True) -> None:
    """Atomically write a parquet file (temp + fsync + rename). Float columns skip dictionary
    encoding, which costs ~3x the write time on measured values and rarely pays off."""
    dict_cols = [f.name for f in table.schema if not _is_float(f.type)]
    atomic_write(
        path,
        lambda p: pq.write_table(table, p, compression="snappy", use_dictionary=dict_cols),
        durable,
    )


def read_table(path: Path, what: str = "parquet file") -> pa.Table:
    """Read a parquet file; a truncated or corrupt file raises ``CorruptFileError``."""
    path = Path(path)
    try:
        return pq.read_table(path)
    except FileNotFoundError:
        raise
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
        raise CorruptFileError(
            path,
            f"{what} cannot be read ({e})",
            "it is truncated or corrupt; restore it from a copy (anyskill's writer never "
            "leaves such a file behind — was it written by another tool or copied partially?)",
        ) from e


def check_column(path: Path, table: pa.Table, key: str, f: Feature) -> None:
    """The column ``key`` exists and has the type ``info.json`` declares for it."""
    if key not in table.column_names:
        raise SchemaMismatchError(
            path,
            f"column {key!r} declared in meta/info.json is missing (columns: {table.column_names})",
        )
    t = table.schema.field(key).type
    want_scalar = pa.from_numpy_dtype(np.dtype(f.dtype))
    if f.is_scalar:
        ok = t == want_scalar
        actual = str(t)
    elif pa.types.is_fixed_size_list(t):
        ok = t.list_size == f.shape[0] and t.value_type == want_scalar
        actual = f"{t.value_type}[{t.list_size}]"
    elif pa.types.is_list(t) or pa.types.is_large_list(t):
        ok = t.value_type == want_scalar
        actual = f"{t.value_type}[?]"
    else:
        ok, actual = False, str(t)
    if not ok:
        raise SchemaMismatchError(
            path,
            f"column {key!r}: expected {f.dtype}{list(f.shape)} as declared in meta/info.json, "
            f"got {actual}",
            "the data file and info.json disagree; regenerate one of them",
        )
