"""The one table of dtype names the configs, the model, checkpoints and exports use."""
from __future__ import annotations

import ml_dtypes
import numpy as np

DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16),
          "float16": np.dtype(np.float16)}


def as_dtype(name: str) -> np.dtype:
  """numpy dtype of a name in :data:`DTYPES` (jnp accepts it as is)."""
  if name not in DTYPES:
    raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}")
  return DTYPES[name]


def dtype_name(dtype) -> str:
  """Inverse of :func:`as_dtype`."""
  dtype = np.dtype(dtype)
  for name, d in DTYPES.items():
    if d == dtype:
      return name
  raise ValueError(f"unsupported param dtype {dtype}; expected one of {sorted(DTYPES)}")
