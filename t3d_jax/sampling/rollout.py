"""Rollout batching: lists of prompt ids in, one trajectory dict per prompt out.

Pure library code (no file I/O, no tokenizer): the rollout mode reads prompts, tokenizes
them, calls :func:`rollout` and writes JSONL. Prompts are sorted by length and grouped
into fixed-size batches (less padding); widths are rounded up to ``width_multiple`` and
the last batch is filled with copies of a real prompt, so only a few shapes compile.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional, Sequence

import jax
import numpy as np

from t3d_jax.models.sdar import SDARConfig
from t3d_jax.sampling.config import DecodeConfig, DecodeError
from t3d_jax.sampling.sampler import make_generate


@dataclasses.dataclass
class DecodeStats:
  """Where a rollout's time went (filled in when passed to :func:`rollout`)."""
  compile_s: float = 0.0     # ahead-of-time compilation, once per batch shape
  decode_s: float = 0.0      # the decoding calls alone (what tokens/s uses)
  batches: int = 0


def plan_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
  """Prompt indices grouped into batches of at most ``batch_size``, by ascending length
  (ties keep input order)."""
  order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
  return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def pad_prompts(prompts: Sequence[Sequence[int]], rows: int, width: int):
  """Right-pad ``prompts`` to [rows, width] (missing rows repeat the first prompt)."""
  ids = np.zeros((rows, width), np.int32)
  lens = np.zeros((rows,), np.int32)
  for r in range(rows):
    p = prompts[r] if r < len(prompts) else prompts[0]
    ids[r, :len(p)] = p
    lens[r] = len(p)
  return ids, lens


def rollout(params, cfg: SDARConfig, prompts: Sequence[Sequence[int]], dcfg: DecodeConfig,
            rng, *, batch_size: int = 16, width_multiple: int = 64, mesh=None,
            data_axis: str = "data",
            progress: Optional[Callable[[int], None]] = None,
            stats: Optional[DecodeStats] = None) -> list[dict]:
  """Decode every prompt; returns, in input order, dicts with ``response_ids`` (list of
  generated ids, cut after the stop token), ``step_map`` (same length), ``length`` and
  ``nfe``. Batch b uses ``fold_in(rng, b)``: results are deterministic given prompts,
  batch_size and rng (greedy results do not depend on the grouping at all).
  ``progress(n)`` is called with the number of prompts finished after each batch. With
  ``stats``, each batch shape is compiled ahead of time and the clock covers only the
  decoding calls."""
  if batch_size < 1:
    raise DecodeError(f"batch_size must be >= 1, got {batch_size}")
  if width_multiple < 1:
    raise DecodeError(f"width_multiple must be >= 1, got {width_multiple}")
  prompts = [list(map(int, p)) for p in prompts]
  if not prompts:
    return []
  if mesh is not None and batch_size % mesh.shape[data_axis]:
    raise DecodeError(f"batch_size {batch_size} is not a multiple of the mesh's "
                      f"{data_axis!r} axis ({mesh.shape[data_axis]})")
  if dcfg.max_length is not None:
    for i, p in enumerate(prompts):
      if len(p) + dcfg.max_new_tokens > dcfg.max_length:
        raise DecodeError(f"prompt too long: prompt {i} has {len(p)} tokens + max_new_tokens="
                          f"{dcfg.max_new_tokens} > max_length={dcfg.max_length}")
  run = make_generate(cfg, dcfg, mesh, data_axis)
  compiled: dict = {}  # (width) -> executable, when timing
  results: list[Optional[dict]] = [None] * len(prompts)
  done = 0
  for bi, idx in enumerate(plan_batches([len(p) for p in prompts], batch_size)):
    group = [prompts[i] for i in idx]
    width = max(1, -(-max(len(p) for p in group) // width_multiple) * width_multiple)
    if dcfg.max_length is not None:
      width = min(width, dcfg.max_length)
    ids, lens = pad_prompts(group, batch_size, width)
    key = jax.random.fold_in(rng, bi)
    if stats is None:
      out = run(params, ids, lens, key)
    else:
      if width not in compiled:
        t0 = time.perf_counter()
        compiled[width] = run.lower(params, ids, lens, key).compile()
        stats.compile_s += time.perf_counter() - t0
      t0 = time.perf_counter()
      out = jax.block_until_ready(compiled[width](params, ids, lens, key))
      stats.decode_s += time.perf_counter() - t0
      stats.batches += 1
    out = {k: np.asarray(v) for k, v in out.items()}
    for r, i in enumerate(idx):
      n = int(out["lengths"][r])
      results[i] = dict(response_ids=out["ids"][r, :n].tolist(),
                        step_map=out["step_map"][r, :n].tolist(), length=n,
                        nfe=int(out["nfe"][r]))
    done += len(idx)
    if progress is not None:
      progress(done)
  return results
