"""Trajectories JSONL -> training samples -> [A, M, ...] numpy batches for the update step.

Rows follow the dLLM-RL layout the rollout mode writes: ``question``, ``answer``,
``prompt`` (the exact string decoded from) and per-sample lists ``step_map``,
``response_ids`` (t3d_jax), ``full_output``, ``response_length``, ``extracted_output``.
By default training uses the stored prompt and ``response_ids``, so the step_map aligns
by construction (docs/method.md §6); ``original_prompts`` / ``retokenize`` reproduce the
released code (chat template on the bare question; re-tokenised ``full_output``).
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Sequence

import numpy as np

from t3d_jax.data import jsonl
from t3d_jax.data.tokenizer import check_encodable, encode
from t3d_jax.distill.examples import ExampleConfig, build_examples, example_seeds, pad_batch
from t3d_jax.errors import InputError
from t3d_jax.train.examples import check_batching, split_micro_batches


@dataclasses.dataclass(frozen=True)
class Sample:
  prompt_ids: tuple
  response_ids: tuple
  step_map: tuple
  row: int  # 1-based JSONL row it came from


def _per_sample(value, n=None):
  """A per-sample list field: a list of lists, or one flat list (= one sample)."""
  if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
    return value
  return [value] if n in (None, 1) else None


def _int_list(x) -> bool:
  """A list of JSON integers (true/false are not token ids)."""
  return isinstance(x, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in x)


def _check_ranges(where: str, k: int, resp, step_map, vocab: int, nfe) -> None:
  """Token ids in [0, vocab); step_map entries -1 (revealed before decoding, e.g. a
  prompt tail) or a 1-based step, at most the sample's forwards (``nfe``, when given)."""
  bad = next((x for x in resp if not 0 <= x < vocab), None)
  if bad is not None:
    raise InputError(f"{where}, sample {k}: response id {bad} is outside the tokenizer's "
                     f"vocabulary [0, {vocab})")
  top = nfe[k] if nfe is not None and isinstance(nfe[k], int) else None
  bad = next((x for x in step_map if x != -1 and (x < 1 or (top is not None and x > top))),
             None)
  if bad is not None:
    limit = f"1..{top} (its nfe)" if top is not None else ">= 1"
    raise InputError(f"{where}, sample {k}: step_map value {bad}: expected -1 or a step "
                     f"{limit}")


def rollout_record(path) -> dict:
  """What the rollout recorded beside ``path`` (its ``<stem>.meta.json``): ``block_size``
  and ``canvas`` (decode.max_new_tokens) it decoded with, the model ``family``; each None
  when unknown (a file of the released code, or written before families were recorded)."""
  meta = pathlib.Path(path).with_name(pathlib.Path(path).stem + ".meta.json")
  try:
    rec = json.loads(meta.read_text())
  except (OSError, ValueError):
    rec = {}
  rec = rec if isinstance(rec, dict) else {}
  dec = rec.get("settings", {}).get("decode", {}) if isinstance(rec.get("settings"), dict) else {}

  def num(key):
    try:
      return int(dec[key])
    except (KeyError, TypeError, ValueError):
      return None
  family = rec.get("family")
  return dict(block_size=num("block_size"), canvas=num("max_new_tokens"),
              family=family if isinstance(family, str) else None)


def check_family(record: dict, family, canvas: int, data: str, model: str) -> None:
  """Trajectories are distilled into a model of the family that wrote them, and a
  bidirectional family at the canvas they were decoded on (``canvas``: the width the
  batches are padded to, 0 for a block-causal family); one-line errors otherwise."""
  if record["family"] is not None and record["family"] != family.name:
    raise InputError(f"{data}: trajectories written by a {record['family']} model, but "
                     f"{model} is a {family.name} model: roll out with the model you distil "
                     "(a step map is the decoding order of one family's sampler)")
  if canvas and record["canvas"] is not None and record["canvas"] != canvas:
    raise InputError(f"{data}: decoded on a canvas of {record['canvas']} tokens, but "
                     f"decode.max_new_tokens={canvas}: a {family.name} model trains on the "
                     "canvas it decodes, so set --config.decode.max_new_tokens="
                     f"{record['canvas']} (or roll out again)")


def training_block_size(configured: int, recorded: int | None, allow_other: bool,
                        data: str) -> int:
  """The block distill trains at: the trajectories' (``configured`` 0 or equal), or
  ``configured`` when another one is allowed on purpose; else one-line errors."""
  if configured < 0:
    raise InputError(f"config examples.block_size={configured}: must be >= 0 (0 = the "
                     "block the trajectories were decoded with)")
  if recorded is None:
    if not configured:
      raise InputError(f"{data}: its block size is unknown (no meta.json from the rollout "
                       "mode beside it): set --config.examples.block_size")
    return configured
  if configured and configured != recorded and not allow_other:
    raise InputError(f"config examples.block_size={configured}, but {data} was decoded at "
                     f"block {recorded}: train at the block you decode with, or set "
                     "--config.distill.allow_other_block=True to do it on purpose")
  return configured or recorded


def load_trajectory_samples(path, tokenizer, *, original_prompts: bool = False,
                            retokenize: bool = False, max_prompt_len: int = 1 << 30,
                            max_gen_length: int | None = None):
  """Samples of every row of a trajectories JSONL, plus counts.

  Prompts longer than ``max_prompt_len`` tokens are dropped together with their
  responses and step_maps (the released code drops only the prompts, shifting every
  later step_map by one row)."""
  prompts_text, raw = [], []
  vocab = len(tokenizer)
  for row, obj in jsonl.iter_jsonl(path):
    where = f"{path}, row {row}"
    if "step_map" not in obj:
      raise InputError(f"{where}: no 'step_map' field (is this a rollout trajectories file?)")
    maps = _per_sample(obj["step_map"])
    if not all(_int_list(m) for m in maps):
      raise InputError(f"{where}: 'step_map' must be a list of integer lists (one per sample)")
    if retokenize:
      if "full_output" not in obj:
        raise InputError(f"{where}: retokenize needs a 'full_output' field")
      outs = obj["full_output"] if isinstance(obj["full_output"], list) else [obj["full_output"]]
      if not all(isinstance(t, str) for t in outs):
        raise InputError(f"{where}: 'full_output' must be a string or a list of strings")
      resps = [encode(tokenizer, [t])[0] for t in outs]
      check_encodable(tokenizer, outs, resps, [f"{where}, full_output {k}"
                                               for k in range(len(outs))])
      # released behaviour: align by index, truncate or pad the step_map
      maps = [list(m[: len(r)]) + [-1] * (len(r) - len(m)) for m, r in zip(maps, resps)]
    else:
      if "response_ids" not in obj:
        raise InputError(f"{where}: no 'response_ids' field (set distill.retokenize=True to "
                         "tokenize 'full_output' as the released code does)")
      resps = _per_sample(obj["response_ids"], len(maps))
    if resps is None or len(resps) != len(maps):
      raise InputError(f"{where}: {len(maps)} step_maps but "
                       f"{'?' if resps is None else len(resps)} responses")
    nfe = obj.get("nfe")
    nfe = nfe if isinstance(nfe, list) and len(nfe) == len(maps) else None
    for k, (r, m) in enumerate(zip(resps, maps)):
      if not _int_list(r) or len(r) != len(m):
        size = len(r) if isinstance(r, list) else type(r).__name__
        raise InputError(f"{where}, sample {k}: response_ids ({size}) and step_map ({len(m)}) "
                         "must be integer lists of equal length")
      _check_ranges(where, k, r, m, vocab, nfe)
    if not isinstance(obj.get("answer"), (str, int, float)) or str(obj["answer"]).strip() == "":
      raise InputError(f"{where}: empty or missing 'answer' (reference answer of the question)")
    if original_prompts:
      if not isinstance(obj.get("question"), str):
        raise InputError(f"{where}: original_prompts needs a 'question' string")
      text = tokenizer.apply_chat_template([{"role": "user", "content": obj["question"]}],
                                           tokenize=False, add_generation_prompt=True)
    else:
      if not isinstance(obj.get("prompt"), str):
        raise InputError(f"{where}: no 'prompt' string (the exact prompt the teacher saw)")
      text = obj["prompt"]
    prompts_text.append(text)
    raw.append((row, resps, maps))
  prompt_ids = encode(tokenizer, prompts_text)
  check_encodable(tokenizer, prompts_text, prompt_ids,
                  [f"{path}, row {row}, prompt" for row, _, _ in raw])
  samples, dropped = [], 0
  for p, (row, resps, maps) in zip(prompt_ids, raw):
    if len(p) > max_prompt_len:
      dropped += len(resps)
      continue
    for r, m in zip(resps, maps):
      cap = len(r) if max_gen_length is None else max_gen_length
      samples.append(Sample(tuple(p), tuple(r[:cap]), tuple(m[:cap]), row))
  return samples, dict(rows=len(raw), samples=len(samples), dropped_long_prompt=dropped)


def make_batch(samples: Sequence[Sample], indices: np.ndarray, ex_cfg: ExampleConfig, *,
               micro_batch: int, length_bucket: int, pad_id: int, mask_id: int,
               vocab_size: int, seed: int, noise_step: int, response_width: int = 0) -> dict:
  """One global batch as numpy arrays with leading [A, M] axes (A = len/M).

  Noise comes from per-example seeds (seed, noise_step, dataset index), so it does not
  depend on the batch neighbours; ``noise_step`` is the update step (fresh noise each
  time an example is drawn) or 0 (the released fixed noise). ``response_width``: see
  :func:`t3d_jax.train.examples.pad_batch`."""
  check_batching(len(indices), micro_batch, length_bucket, ex_cfg.block_size,
                 "distill.length_bucket")
  sel = [samples[i] for i in indices]
  padded = pad_batch([s.prompt_ids for s in sel], [s.response_ids for s in sel],
                     [s.step_map for s in sel], pad_id=pad_id, multiple_of=length_bucket,
                     response_width=response_width)
  ex = build_examples(padded["prompt_ids"], padded["response_ids"], padded["step_map"],
                      example_seeds(seed, noise_step, indices), ex_cfg, pad_id=pad_id,
                      mask_id=mask_id, vocab_size=vocab_size,
                      response_len=padded["response_len"])
  batch = {k: ex[k] for k in ("ids", "positions", "labels", "p_mask", "step_map")}
  batch["step_map"] = batch["step_map"].astype(np.int32)
  batch["weight"] = ex["keep"].astype(np.float32)
  return split_micro_batches(batch, micro_batch)
