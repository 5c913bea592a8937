"""What the rollout and eval modes share: question/answer rows, prompts, model loading,
decoding settings from the config, and batched decoding split over the processes
(``decode_shared``; timed: ``timed_decode``).

Config keys read here (t3d_jax/config_base.py): ``config.decode.*`` (the decoding
setting: block, steps, strategy, temperature, ... plus batching), ``config.prompt_template``
and, per mode, ``data``/``question_field``/``answer_field``/``limit``/``use_tfds``/
``tfds_dir`` of ``config.rollout`` or ``config.eval``.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

import jax
import numpy as np
from absl import logging

from t3d_jax import checkpoint
from t3d_jax.data import datasets
from t3d_jax.data import tokenizer as tok_lib
from t3d_jax.config_base import expand_workdir
from t3d_jax.errors import InputError
from t3d_jax.sampling.config import DecodeConfig, DecodeError
from t3d_jax.sampling.rollout import DecodeStats

# shipped set name -> (TFDS config of t3d_math_qa, split)
_TFDS_SHIPPED = {"gsm8k_train": ("gsm8k", "train"), "gsm8k_test": ("gsm8k", "test"),
                 "math500": ("math500", "test")}


# ------------------------------------------------------------------------------- data

def load_rows(d, workdir: str = "") -> list[dict]:
  """Question/answer rows ``{question, answer, index}`` of ``d.data`` (a shipped set
  name or a JSONL path; "{workdir}" in it is replaced by ``workdir``), first ``d.limit`` rows (0 = all), directly from the JSONL or,
  with ``d.use_tfds``, through the offline TFDS builder (prepared under ``d.tfds_dir``,
  default <workdir>/tfds)."""
  if not d.data:
    raise InputError("no dataset: set data to gsm8k_train, gsm8k_test, math500 or a "
                     "question/answer JSONL path")
  if d.limit < 0:
    raise InputError(f"limit must be >= 0 (0 = all rows), got {d.limit}")
  limit = d.limit or None
  data = expand_workdir(d.data, workdir)
  if not d.use_tfds:
    rows = datasets.load_qa(data, d.question_field, d.answer_field, limit=limit)
  else:
    rows = _load_rows_tfds(d, data, workdir, limit)
  if not rows:
    raise InputError(f"{data}: no question/answer rows")
  return rows


def _load_rows_tfds(d, data: str, workdir: str, limit: Optional[int]) -> list[dict]:
  from t3d_jax.data import tfds_builders as tb
  from t3d_jax.data.loader import decode_row
  data_dir = d.tfds_dir or (os.path.join(workdir, "tfds") if workdir else "")
  if not data_dir:
    raise InputError("use_tfds needs tfds_dir (or --config.workdir)")
  if data in _TFDS_SHIPPED and (d.question_field, d.answer_field) == ("question", "answer"):
    source, split = _TFDS_SHIPPED[data]
  else:
    source = tb.user_qa_config({"train": data}, d.question_field, d.answer_field)
    split = "train"
  builder = tb.prepare(tb.T3dMathQa, source, data_dir)
  src = builder.as_data_source()[split]
  n = len(src) if limit is None else min(limit, len(src))
  rows = [decode_row(src[i]) for i in range(n)]
  return [dict(question=r["question"], answer=r["answer"], index=int(r["index"])) for r in rows]


# ------------------------------------------------------------------------------- model

@dataclasses.dataclass
class Model:
  name: str
  path: str
  params: object
  cfg: object
  tokenizer: object
  ids: tok_lib.SpecialIds


def load_model(path, name: str = "model", tokenizer_dir: str = "", param_dtype: str = "",
               dtype: str = "") -> Model:
  """Params, config, tokenizer and special ids of an HF dir or a t3d_jax model dir;
  ``param_dtype`` casts the weights, ``dtype`` sets the compute dtype ('' keeps them)."""
  from t3d_jax.convert import load_params
  p = Path(path)
  if not p.exists():
    raise InputError(f"model {name!r}: {p} does not exist (a model dir from the convert or "
                     f"distill mode, or an HF dir)")
  params, cfg = load_params(p, param_dtype=param_dtype or None)
  if dtype:
    cfg = cfg.replace(dtype=dtype)
  tokenizer = tok_lib.load_tokenizer(tokenizer_dir or checkpoint.meta_dir_of(p))
  ids = tok_lib.special_ids(tokenizer)
  if ids.vocab_size > cfg.vocab_size:
    raise InputError(f"model {name!r} ({p}): tokenizer has {ids.vocab_size} tokens but the "
                     f"model's vocabulary is {cfg.vocab_size}")
  return Model(name, os.fspath(p), params, cfg, tokenizer, ids)


# ------------------------------------------------------------------------------- decoding

def decode_config(dc, ids: tok_lib.SpecialIds, **overrides) -> DecodeConfig:
  """DecodeConfig from ``config.decode`` and the tokenizer's ids (stop ids: EOS plus
  <|im_end|>/<|endoftext|> where present, plus ``dc.extra_stop_ids``)."""
  stops = tuple(ids.stop_ids) + tuple(int(t) for t in dc.extra_stop_ids
                                      if int(t) not in ids.stop_ids)
  kw = dict(block_size=dc.block_size, denoising_steps=dc.denoising_steps,
            strategy=dc.strategy, threshold=dc.threshold, entropy_bound=dc.entropy_bound,
            temperature=dc.temperature, top_k=dc.top_k, top_p=dc.top_p,
            max_new_tokens=dc.max_new_tokens, mask_id=ids.mask_id, stop_ids=stops,
            pad_id=ids.pad_id, prompt_mode=dc.prompt_mode, commit_mode=dc.commit_mode,
            reveal_all_on_last_step=dc.reveal_all_on_last_step,
            max_length=dc.max_length or None)
  kw.update(overrides)
  try:
    return DecodeConfig(**kw).validate(ids.vocab_size)
  except DecodeError as e:
    raise InputError(f"config.decode: {e}") from None


def build_prompts(tokenizer, rows: Sequence[dict], prompt_template: str,
                  dcfg: DecodeConfig, data_name: str) -> tuple[list[str], list[list[int]]]:
  """Prompt strings (chat template + math instruction, or ``prompt_template``) and their
  ids; a prompt that does not fit ``dcfg.max_length`` with ``max_new_tokens`` is an
  InputError naming the row."""
  texts = [tok_lib.math_prompt(tokenizer, r["question"], prompt_template or None) for r in rows]
  prompt_ids = tok_lib.encode(tokenizer, texts)
  if dcfg.max_length is not None:
    budget = dcfg.max_length - dcfg.max_new_tokens
    for r, p in zip(rows, prompt_ids):
      if len(p) > budget:
        raise InputError(
            f"{data_name}, row {r['index'] + 1}: prompt too long: {len(p)} tokens > budget "
            f"{budget} (decode.max_length={dcfg.max_length} - decode.max_new_tokens="
            f"{dcfg.max_new_tokens}); raise decode.max_length or drop the row")
  for r, p in zip(rows, prompt_ids):
    if not p:
      raise InputError(f"{data_name}, row {r['index'] + 1}: prompt has no tokens")
  return texts, prompt_ids


def prompt_tail(prompt_len: int, dcfg: DecodeConfig) -> int:
  """Prompt tokens that sit in the first generated block (engine prompt mode)."""
  return prompt_len % dcfg.block_size if dcfg.prompt_mode == "engine" else 0


def data_mesh(dc):
  """With ``decode.data_parallel``: a 1-axis ('data') mesh over this process's devices,
  each batch split over it (params replicated); else None (one device)."""
  if not dc.data_parallel:
    return None
  from jax.sharding import Mesh
  devices = jax.local_devices()
  if dc.batch_size % len(devices):
    raise InputError(f"config decode.batch_size={dc.batch_size} is not a multiple of the "
                     f"{len(devices)} local devices (decode.data_parallel=True)")
  return Mesh(np.array(devices), ("data",))


def decode_shared(params, cfg, prompts: Sequence[Sequence[int]], dcfg: DecodeConfig, rng, *,
                  batch_size: int, width_multiple: int, mesh=None,
                  progress: Optional[Callable[[int], None]] = None,
                  stats: Optional[DecodeStats] = None) -> list[dict]:
  """:func:`t3d_jax.sampling.rollout.rollout` with its batches split over the processes:
  process p decodes the batches b with ``b % process_count == p`` and every process gets
  every result (one all-gather), in input order, equal to a one-process rollout (batch b
  uses ``fold_in(rng, b)`` whichever process decodes it). Every process must call it with
  the same arguments. ``progress`` sees this process's count times the process count
  (an estimate) and then the total. With ``stats``: compile_s and decode_s of the
  slowest process (decode_s is then the wall time of the parallel decode), batches of all."""
  from t3d_jax import parallel
  from t3d_jax.sampling.rollout import pack_results, rollout, unpack_results
  count, index = jax.process_count(), jax.process_index()
  kw = dict(batch_size=batch_size, width_multiple=width_multiple, mesh=mesh)
  if count == 1 or not prompts:
    return rollout(params, cfg, prompts, dcfg, rng, progress=progress, stats=stats, **kw)
  n = len(prompts)
  mine = DecodeStats()
  scaled = None if progress is None else (lambda k: progress(min(n, k * count)))
  local = rollout(params, cfg, prompts, dcfg, rng, stats=None if stats is None else mine,
                  progress=scaled, part=(index, count), **kw)
  everyone = parallel.allgather_host(pack_results(local, dcfg.max_new_tokens))  # [P, n, W]
  owners = everyone[:, :, 0].sum(0)
  if not (owners == 1).all():  # a bug, not bad input
    raise RuntimeError(f"decode_shared: prompts decoded by {sorted(set(owners.tolist()))} "
                       "processes, expected exactly 1 each")
  results = unpack_results(everyone[everyone[:, :, 0].argmax(0), np.arange(n)])
  logging.info("process %d of %d decoded %d of %d sequences", index, count,
               sum(r is not None for r in local), n)
  if stats is not None:
    t = parallel.allgather_host(np.array([mine.compile_s, mine.decode_s, mine.batches],
                                         np.float32))
    stats.compile_s += float(t[:, 0].max())
    stats.decode_s += float(t[:, 1].max())
    stats.batches += int(t[:, 2].sum())
  if progress is not None:
    progress(n)
  return results


def timed_decode(params, cfg, prompts: Sequence[Sequence[int]], dcfg: DecodeConfig, rng, *,
                 batch_size: int, width_multiple: int, mesh=None,
                 progress: Optional[Callable[[int], None]] = None
                 ) -> tuple[list[dict], DecodeStats]:
  """:func:`decode_shared` with compilation kept out of the timing."""
  stats = DecodeStats()
  results = decode_shared(params, cfg, prompts, dcfg, rng, batch_size=batch_size,
                          width_multiple=width_multiple, mesh=mesh, progress=progress,
                          stats=stats)
  return results, stats
