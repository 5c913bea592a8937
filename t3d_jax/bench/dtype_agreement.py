"""bf16 decoding against fp32: how often greedy decoding gives the same tokens.

    python -m t3d_jax.bench dtype_agreement --model workdir/demo/model \
        --data workdir/demo/task/test.jsonl --template '{question}=' [--steps 4,2,1]

One model dir (a trained model: on random weights the logits are near-uniform and
agreement says little), the questions of a question/answer JSONL, greedy decoding of
``--max-new`` tokens with block ``--block`` and each s in ``--steps``, once with compute
dtype float32 and once with ``--dtype`` (bfloat16: ``model.dtype=bfloat16``; the weights
are cast too with ``--cast-params``). Reported per s: the fraction of sequences whose
tokens are identical, the fraction of token positions that agree (over the longer of
the two responses: a position one of them lacks disagrees), the mean position of the
first difference among the sequences that differ, and each dtype's tokens/s (the
decoding calls alone, each batch shape compiled ahead of time; both dtypes in one run).
"""
from __future__ import annotations

import argparse
import sys

import jax
import numpy as np

from t3d_jax.config_base import base_config
from t3d_jax.convert import load_model
from t3d_jax.data import tokenizer as tok_lib
from t3d_jax.data.jsonl import iter_jsonl, write_json_atomic
from t3d_jax.errors import InputError
from t3d_jax.models.numerics import Numerics
from t3d_jax.sampling import DecodeStats, Decoder


def parse(argv):
  p = argparse.ArgumentParser(prog="python -m t3d_jax.bench dtype_agreement")
  p.add_argument("--model", required=True, help="a model dir (or HF dir)")
  p.add_argument("--data", required=True, help="JSONL with a 'question' field per row")
  p.add_argument("--template", default="", help="prompt template ('' = the chat template)")
  p.add_argument("--limit", type=int, default=0, help="first N rows (0 = all)")
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--cast-params", action="store_true", help="cast the weights to --dtype too")
  p.add_argument("--block", type=int, default=4)
  p.add_argument("--steps", default="4,2,1", help="comma list of denoising steps per block")
  p.add_argument("--max-new", type=int, default=20)
  p.add_argument("--prompt-mode", default="engine", help="engine | aligned (the demo's)")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--json", default="", help="also write the results to this file")
  return p.parse_args(argv)


def agreement(a: list[list[int]], b: list[list[int]]) -> dict:
  """Sequence-, token- and first-difference statistics of two lists of responses."""
  same = [x == y for x, y in zip(a, b)]
  agree = total = 0
  first = []
  for x, y in zip(a, b):
    n = max(len(x), len(y))
    hits = [i < len(x) and i < len(y) and x[i] == y[i] for i in range(n)]
    agree, total = agree + sum(hits), total + n
    if x != y:
      first.append(hits.index(False) if False in hits else min(len(x), len(y)))
  return dict(sequences=float(np.mean(same)) if same else 1.0,
              tokens=agree / total if total else 1.0,
              first_difference=float(np.mean(first)) if first else None)


def _decode(model, prompts, section):
  """(responses, tokens/s of the decoding calls: each batch shape compiled before)."""
  stats = DecodeStats()
  decoder = Decoder.from_config(section, model.ids, model.cfg)
  out = decoder.decode(model.params, prompts, jax.random.key(0), stats=stats)
  return ([r["response_ids"] for r in out],
          sum(r["length"] for r in out) / max(stats.decode_s, 1e-9))


def main(argv=None) -> int:
  a = parse(argv or [])
  try:
    rows = [dict(obj, index=i - 1) for i, obj in iter_jsonl(a.data)]
    rows = rows[:a.limit] if a.limit else rows
    if not rows or any("question" not in r for r in rows):
      raise InputError(f"{a.data}: needs rows with a 'question' field")
    ref = load_model(a.model, "float32", numerics=Numerics("float32", "", "", ""))
    low = load_model(a.model, a.dtype, numerics=Numerics(
        a.dtype, a.dtype if a.cast_params else "", "", ""))
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  _, prompts = tok_lib.build_prompts(ref.tokenizer, rows, a.template, a.data)
  results = []
  print(f"{a.model}: {len(prompts)} prompts, greedy, block {a.block}, {a.max_new} new tokens;"
        f" float32 vs {a.dtype}{' (weights cast)' if a.cast_params else ''}")
  print(f"{'steps':>6}{'same seq %':>12}{'same tok %':>12}{'1st diff':>10}"
        f"{'float32 tok/s':>16}{a.dtype + ' tok/s':>16}")
  for s in (int(x) for x in a.steps.split(",") if x):
    section = _decode_section(a, s)
    x, tps_ref = _decode(ref, prompts, section)
    y, tps_low = _decode(low, prompts, section)
    r = dict(steps=s, **agreement(x, y), tokens_per_s_float32=tps_ref,
             tokens_per_s_low=tps_low)
    results.append(r)
    fd = "-" if r["first_difference"] is None else f"{r['first_difference']:.1f}"
    print(f"{s:>6}{100 * r['sequences']:>12.1f}{100 * r['tokens']:>12.1f}{fd:>10}"
          f"{tps_ref:>16.0f}{tps_low:>16.0f}")
  if a.json:
    write_json_atomic(a.json, dict(model=a.model, data=a.data, dtype=a.dtype,
                                   cast_params=a.cast_params, results=results))
  return 0


def _decode_section(a, steps: int):
  """A ``config.decode``-shaped section: greedy, this block and step count."""
  d = base_config().decode
  d.update(block_size=a.block, denoising_steps=steps, temperature=0.0,
           prompt_mode=a.prompt_mode, max_new_tokens=a.max_new, batch_size=a.batch,
           width_multiple=16)
  return d


if __name__ == "__main__":
  raise SystemExit(main())
