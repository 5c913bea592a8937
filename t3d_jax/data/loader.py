"""Deterministic, per-process iteration over random-access row sources.

A source is anything with ``len()`` and integer indexing: a TFDS ``array_record`` data
source (``builder.as_data_source()[split]``), a list of dicts (:func:`~t3d_jax.data.
datasets.load_qa`), a grain ``MapDataset``. Rows come out as python/numpy: bytes become
``str``, numpy scalars become python numbers, sequences stay numpy arrays.

Order: epoch ``e`` visits ``permutation(n)`` drawn from ``np.random.default_rng((seed,
e))`` (identity when ``shuffle=False``); process ``p`` of ``P`` takes the positions
``p, p + P, p + 2P, ...`` of that order, so processes see disjoint rows that together
cover the epoch. With ``drop_remainder=True`` every process gets exactly ``n // P`` rows
per epoch (for lock-step training); without it (evaluation) each row is seen once and the
first ``n % P`` processes get one row more. The order depends only on (seed, epoch, n,
P), never on timing, and ``start`` skips rows already consumed by this process (resume).
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping, Optional

import numpy as np


def decode_row(row: Mapping[str, Any]) -> dict:
  """A TFDS record (bytes text, numpy scalars) as python values; arrays kept."""
  out = {}
  for k, v in row.items():
    if isinstance(v, bytes):
      v = v.decode("utf-8")
    elif isinstance(v, np.ndarray) and v.dtype.kind in "SO":
      v = [x.decode("utf-8") if isinstance(x, bytes) else x for x in v.tolist()]
    elif isinstance(v, np.generic):
      v = v.item()
    out[k] = v
  return out


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
  """Indices of all ``n`` rows in the visiting order of ``epoch``."""
  if not shuffle:
    return np.arange(n, dtype=np.int64)
  return np.random.default_rng((int(seed), int(epoch))).permutation(n).astype(np.int64)


def shard_indices(n: int, *, seed: int = 0, epoch: int = 0, shuffle: bool = True,
                  process_index: int = 0, process_count: int = 1,
                  drop_remainder: bool = False) -> np.ndarray:
  """Row indices that process ``process_index`` visits in ``epoch``."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"bad sharding: process_index={process_index}, "
                     f"process_count={process_count}")
  order = epoch_order(n, seed, epoch, shuffle)
  if drop_remainder:
    order = order[:(n // process_count) * process_count]
  return order[process_index::process_count]


def iterate(source, *, seed: int = 0, shuffle: bool = True, process_index: int = 0,
            process_count: int = 1, num_epochs: Optional[int] = 1,
            drop_remainder: bool = False, start: int = 0,
            fetch: int = 64) -> Iterator[dict]:
  """Yields decoded rows of this process's shard, epoch after epoch.

  ``num_epochs=None`` repeats forever. ``start`` rows of the stream are skipped (the data
  position saved in a checkpoint). Rows are read ``fetch`` at a time through the
  source's ``__getitems__`` when it has one."""
  n = len(source)
  if n == 0:
    raise ValueError("empty data source")
  per_epoch = len(shard_indices(n, seed=seed, process_index=process_index,
                                process_count=process_count, drop_remainder=drop_remainder,
                                shuffle=False))
  if per_epoch == 0:
    raise ValueError(f"{n} rows cannot feed {process_count} processes with "
                     f"drop_remainder=True")
  epoch, skip = divmod(max(0, int(start)), per_epoch)
  getitems = getattr(source, "__getitems__", None)
  while num_epochs is None or epoch < num_epochs:
    idx = shard_indices(n, seed=seed, epoch=epoch, shuffle=shuffle,
                        process_index=process_index, process_count=process_count,
                        drop_remainder=drop_remainder)[skip:]
    skip = 0
    for lo in range(0, len(idx), fetch):
      chunk = [int(i) for i in idx[lo:lo + fetch]]
      rows = getitems(chunk) if getitems is not None else [source[i] for i in chunk]
      for r in rows:
        yield decode_row(r)
    epoch += 1
