"""Tensor datatypes of the Open Inference Protocol (``FP32``, ``INT64``, ...) and their NumPy dtypes.

``BYTES`` (length-prefixed strings) and ``BF16`` have no fixed-size NumPy dtype a kernel buffer
could hold, so functions cannot declare them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DATATYPES", "to_datatype", "to_numpy"]

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_NAMES = {dtype: name for name, dtype in DATATYPES.items()}


def to_numpy(datatype: str) -> np.dtype:
    """The NumPy dtype of an OIP datatype name; ValueError naming the known ones."""
    try:
        return DATATYPES[datatype]
    except (KeyError, TypeError):
        raise ValueError(f"datatype {str(datatype)[:40]!r} is not one of {', '.join(DATATYPES)}") from None


def to_datatype(dtype) -> str:
    """The OIP datatype name of a NumPy dtype (native byte order); ValueError if it has none."""
    d = np.dtype(dtype)
    name = _NAMES.get(d) if d.isnative else None
    if name is None:
        raise ValueError(f"dtype {d} has no Open Inference Protocol datatype (known: {', '.join(DATATYPES)})")
    return name
