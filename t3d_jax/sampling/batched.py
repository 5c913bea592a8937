"""Batched decoding of many prompts: lists of prompt ids in, one result per prompt out.

Pure library code (no file I/O, no tokenizer): the rollout and eval modes tokenize,
call :func:`decode` and write JSONL. Prompts are sorted by length and grouped into
fixed-size batches (less padding); widths are rounded up to ``width_multiple`` and the
last batch is filled with copies of a real prompt, so only a few shapes compile.

Randomness is per sequence: prompt i (question q, sample s: ``sample_ids[i]``, by
default (i, 0)) draws with ``fold_in(fold_in(rng, q), s)`` (steps.row_keys), so at any
temperature its tokens do not depend on the batch size, the padding width, which batch
or process decodes it, or the other prompts.

Several processes share one decode: :func:`decode_part` decodes every ``count``-th
batch, :func:`pack_results` / :func:`unpack_results` carry the results between the
processes as one int32 array, and :func:`decode` does the whole split (partition,
all-gather, unpack) so that every process gets every result, equal to one process's.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional, Sequence

import jax
import numpy as np
from absl import logging

from t3d_jax import distributed
from t3d_jax.models.sdar import SDARConfig
from t3d_jax.sampling.config import DecodeConfig, DecodeError
from t3d_jax.sampling.sampler import CompiledDecoder, decode_params, make_generate
from t3d_jax.sampling.steps import Knobs, row_keys

# the key scheme above, recorded by the modes' fingerprints of sampled (T > 0) results
SAMPLE_KEYS = "fold_in(fold_in(rng, question), sample)"


def key_record(dcfg: DecodeConfig) -> dict:
  """What a fingerprint of results decoded with ``dcfg`` records of the key scheme:
  sampled results depend on it (older ones drew a key per batch), greedy ones do not."""
  return {"sample_keys": SAMPLE_KEYS} if dcfg.temperature > 0 else {}


@dataclasses.dataclass
class DecodeStats:
  """Where a rollout's time went (filled in when passed to :func:`rollout`)."""
  compile_s: float = 0.0     # ahead-of-time compilation, once per batch shape
  decode_s: float = 0.0      # the decoding calls alone (what tokens/s uses)
  batches: int = 0


class Executables:
  """The compiled decoders of one model config and mesh: a jit per static decode setting
  (traced values such as a threshold sweep share it) and, for timed callers, an AOT
  executable per (setting, width, batch). Held by whoever decodes many times (a
  :class:`t3d_jax.sampling.Decoder`); nothing is cached globally."""

  def __init__(self, cfg: SDARConfig, mesh=None, data_axis: str = "data"):
    self.cfg, self.mesh, self.data_axis = cfg, mesh, data_axis
    self._runs: dict = {}
    self._aot: dict = {}

  def run(self, dcfg: DecodeConfig) -> CompiledDecoder:
    static = dcfg.static()
    if static not in self._runs:
      self._runs[static] = make_generate(self.cfg, static, self.mesh, self.data_axis)
    return self._runs[static]

  def aot(self, dcfg: DecodeConfig, args: tuple, stats: "DecodeStats"):
    """The executable for ``args`` (params, ids, lens, keys, knobs), compiled ahead of
    time the first time its shape comes (its seconds added to ``stats.compile_s``)."""
    key = (dcfg.static(), args[1].shape)
    if key not in self._aot:
      t0 = time.perf_counter()
      self._aot[key] = self.run(dcfg).lower(*args).compile()
      stats.compile_s += time.perf_counter() - t0
    return self._aot[key]

  @property
  def settings(self) -> int:
    """How many static decode settings are compiled."""
    return len(self._runs)


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


def decode_part(params, cfg: SDARConfig, prompts: Sequence[Sequence[int]], dcfg: DecodeConfig,
            rng, *, batch_size: int = 16, width_multiple: int = 64, mesh=None,
            data_axis: str = "data",
            progress: Optional[Callable[[int], None]] = None,
            stats: Optional[DecodeStats] = None,
            part: tuple[int, int] = (0, 1),
            sample_ids: Optional[Sequence[tuple[int, int]]] = None,
            executables: Optional[Executables] = None) -> list[Optional[dict]]:
  """Decode every prompt; returns, in input order, dicts with ``response_ids`` (list of
  generated ids, cut after the stop token), ``step_map`` (same length), ``length`` and
  ``nfe``. Prompt i draws with ``fold_in(fold_in(rng, q), s)`` for ``(q, s) =
  sample_ids[i]`` (default (i, 0)): its result depends on its prompt, (q, s) and rng
  alone, not on the grouping. ``progress(n)`` is called with the number of prompts
  finished after each batch. With ``stats``, each batch shape is compiled ahead of time
  and the clock covers only the decoding calls. With ``part=(index, count)`` only the
  batches b with ``b % count == index`` are decoded (the other prompts' entries are
  None), so the parts together equal one whole rollout. ``executables`` (of ``cfg`` and
  ``mesh``) keeps the compiled decoders for later calls; without it this call compiles
  its own."""
  index, count = part
  if not 0 <= index < count:
    raise DecodeError(f"part {part}: expected (index, count) with 0 <= index < count")
  if batch_size < 1:
    raise DecodeError(f"batch_size must be >= 1, got {batch_size}")
  if width_multiple < 1:
    raise DecodeError(f"width_multiple must be >= 1, got {width_multiple}")
  prompts = [list(map(int, p)) for p in prompts]
  if not prompts:
    return []
  ids_of = np.asarray([(i, 0) for i in range(len(prompts))] if sample_ids is None else
                      sample_ids, np.int32).reshape(-1, 2)
  if len(ids_of) != len(prompts):
    raise DecodeError(f"sample_ids: {len(ids_of)} (question, sample) pairs for "
                      f"{len(prompts)} prompts")
  if mesh is not None and batch_size % mesh.shape[data_axis]:
    raise DecodeError(f"batch_size {batch_size} is not a multiple of the mesh's "
                      f"{data_axis!r} axis ({mesh.shape[data_axis]})")
  if dcfg.max_length is not None:
    for i, p in enumerate(prompts):
      if len(p) + dcfg.max_new_tokens > dcfg.max_length:
        raise DecodeError(f"prompt too long: prompt {i} has {len(p)} tokens + max_new_tokens="
                          f"{dcfg.max_new_tokens} > max_length={dcfg.max_length}")
  dcfg.validate(cfg.vocab_size)
  if executables is None:
    executables = Executables(cfg, mesh, data_axis)
  elif (executables.cfg, executables.mesh, executables.data_axis) != (cfg, mesh, data_axis):
    raise DecodeError("executables: compiled for another model config or mesh")
  # one jit per static setting: chunks and other traced values (a threshold sweep) reuse it
  run, knobs = executables.run(dcfg), Knobs.of(dcfg)
  results: list[Optional[dict]] = [None] * len(prompts)
  done = 0
  plan = plan_batches([len(p) for p in prompts], batch_size)
  batches = [idx for bi, idx in enumerate(plan) if bi % count == index]
  if batches:  # the decode layout once for all batches, not inside every call
    params = decode_params(params, dcfg, mesh)
  for idx in batches:
    group = [prompts[i] for i in idx]
    width = max(1, -(-max(len(p) for p in group) // width_multiple) * width_multiple)
    if dcfg.max_length is not None:
      width = min(width, dcfg.max_length)
    ids, lens = pad_prompts(group, batch_size, width)
    qs = ids_of[idx + [idx[0]] * (batch_size - len(idx))]  # filler rows copy the first
    key = row_keys(rng, qs[:, 0], qs[:, 1])
    if stats is None:
      out = run(params, ids, lens, key, knobs)
    else:
      compiled = executables.aot(dcfg, (params, ids, lens, key, knobs), stats)
      t0 = time.perf_counter()
      out = jax.block_until_ready(compiled(params, ids, lens, key, knobs))
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


def pack_results(results: Sequence[Optional[dict]], width: int) -> np.ndarray:
  """Results of :func:`rollout` (None where not decoded) as int32 [n, 3 + 2 width]: per
  prompt (decoded 0/1, length, nfe, response ids, step map), right-padded with zeros."""
  out = np.zeros((len(results), 3 + 2 * width), np.int32)
  for i, r in enumerate(results):
    if r is None:
      continue
    n = r["length"]
    if n > width:
      raise DecodeError(f"result {i}: length {n} > width {width}")
    out[i, :3] = (1, n, r["nfe"])
    out[i, 3:3 + n] = r["response_ids"]
    out[i, 3 + width:3 + width + n] = r["step_map"]
  return out


def unpack_results(packed: np.ndarray) -> list[Optional[dict]]:
  """Inverse of :func:`pack_results`."""
  width = (packed.shape[1] - 3) // 2
  out: list[Optional[dict]] = []
  for row in np.asarray(packed):
    n = int(row[1])
    out.append(None if not row[0] else dict(
        response_ids=row[3:3 + n].tolist(), step_map=row[3 + width:3 + width + n].tolist(),
        length=n, nfe=int(row[2])))
  return out


def decode(params, cfg, prompts: Sequence[Sequence[int]], dcfg: DecodeConfig, rng, *,
           batch_size: int, width_multiple: int, mesh=None,
           progress: Optional[Callable[[int], None]] = None,
           stats: Optional[DecodeStats] = None,
           sample_ids: Optional[Sequence[tuple[int, int]]] = None,
           executables: Optional[Executables] = None) -> list[dict]:
  """:func:`decode_part` with its batches split over the processes:
  process p decodes the batches b with ``b % process_count == p`` and every process gets
  every result (one all-gather), in input order, equal to a one-process rollout (each
  sequence's key comes from ``sample_ids``, whichever process decodes it). Every process
  must call it with the same arguments. ``progress`` sees this process's count times the
  process count (an estimate) and then the total. With ``stats``: compile_s and decode_s of the
  slowest process (decode_s is then the wall time of the parallel decode), batches of all."""
  count, index = jax.process_count(), jax.process_index()
  kw = dict(batch_size=batch_size, width_multiple=width_multiple, mesh=mesh,
            sample_ids=sample_ids, executables=executables)
  if count == 1 or not prompts:
    return decode_part(params, cfg, prompts, dcfg, rng, progress=progress, stats=stats, **kw)
  n = len(prompts)
  mine = DecodeStats()
  scaled = None if progress is None else (lambda k: progress(min(n, k * count)))
  local = decode_part(params, cfg, prompts, dcfg, rng, stats=None if stats is None else mine,
                  progress=scaled, part=(index, count), **kw)
  everyone = distributed.allgather_host(pack_results(local, dcfg.max_new_tokens))  # [P, n, W]
  owners = everyone[:, :, 0].sum(0)
  if not (owners == 1).all():  # a bug, not bad input
    raise RuntimeError(f"decode: prompts decoded by {sorted(set(owners.tolist()))} "
                       "processes, expected exactly 1 each")
  results = unpack_results(everyone[everyone[:, :, 0].argmax(0), np.arange(n)])
  logging.info("process %d of %d decoded %d of %d sequences", index, count,
               sum(r is not None for r in local), n)
  if stats is not None:
    t = distributed.allgather_host(np.array([mine.compile_s, mine.decode_s, mine.batches],
                                         np.float32))
    stats.compile_s += float(t[:, 0].max())
    stats.decode_s += float(t[:, 1].max())
    stats.batches += int(t[:, 2].sum())
  if progress is not None:
    progress(n)
  return results
