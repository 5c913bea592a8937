"""Sampler benchmark: cached block-diffusion decoding vs the naive recompute loop.

    python -m t3d_jax.bench sampler [--steps 4,2,1] [--naive-steps 4,2,1] ...

A random SDAR model (~50M params by default), ``--batch`` prompts of random lengths,
greedy decoding of ``--max-new`` tokens with block ``--block``. For each s in --steps,
each commit mode and each layer loop in ``--unroll`` (1: ``decode.unroll_layers``, the
default; 0: the layers scanned over the stacked weights), with attention ``--attention``
(``model.attention``), timed back to back: compile time, the median wall
time of ``--repeats`` decodes, tokens/s (generated tokens over wall time), forwards per
sequence (NFE, TPF = tokens / NFE) and decode MFU (the decode's model FLOPs,
t3d_jax.bench.peer.decode_flops, over its wall time and a ``--dtype`` matmul measured in
the same run, t3d_jax.bench.limits.matmul_peak). The naive baseline
(t3d_jax.bench.naive_decode: jitted full-sequence recompute, no KV cache) runs on the
same prompts for each s in --naive-steps; its outputs are compared token for token with
the cached decoder's. ``--peer sdar`` runs t3d_jax.bench.peer instead (SDAR's generate.py,
the machine's limits and decode MFU).

``--family llada`` or ``dream``: a random model of that family decoded by the
bidirectional sampler (t3d_jax.sampling.canvas) with each cache in ``--caches`` (none:
exact, every forward over the whole sequence; prefix / dual: Fast-dLLM's), for each s;
each cached setting's tokens are compared with cache none's (the share of canvas
positions with the same token, and of sequences identical). ``--model DIR`` decodes a
converted model dir (or HF dir) instead of random weights: the agreement of the caches
on random weights (near-flat logits) understates theirs on a trained model.
"""
from __future__ import annotations

import argparse
import itertools
import time

import jax
import numpy as np

from t3d_jax.bench import limits, peer
from t3d_jax.bench.naive_decode import make_naive_generate
from t3d_jax.models import family as families
from t3d_jax.models.sdar import init_params
from t3d_jax.sampling import DecodeConfig, decode_params, make_generate


def _ints(text: str) -> list[int]:
  return [int(x) for x in text.split(",") if x]


def _progress(row) -> None:
  print(f"  done: {row[0]}, s={row[1]}: compile {row[2]:.1f} s, {row[4]:.0f} tok/s", flush=True)


def parse(argv):
  p = argparse.ArgumentParser(prog="python -m t3d_jax.bench sampler", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--vocab", type=int, default=32000)
  p.add_argument("--hidden", type=int, default=512)
  p.add_argument("--intermediate", type=int, default=1408)
  p.add_argument("--layers", type=int, default=6)
  p.add_argument("--heads", type=int, default=8)
  p.add_argument("--kv-heads", type=int, default=4)
  p.add_argument("--head-dim", type=int, default=64)
  p.add_argument("--tie", action="store_true",
                 help="tie the LM head to the input embedding (tie_word_embeddings)")
  p.add_argument("--dtype", default="float32")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--prompt-min", type=int, default=16)
  p.add_argument("--prompt-max", type=int, default=48)
  p.add_argument("--max-new", type=int, default=128)
  p.add_argument("--block", type=int, default=4)
  p.add_argument("--steps", type=_ints, default=[4, 2, 1], help="comma list of s")
  p.add_argument("--modes", default="separate,fused")
  p.add_argument("--naive-steps", type=_ints, default=[4, 2, 1],
                 help="s values for the naive loop (empty: skip it)")
  p.add_argument("--strategy", default="low_confidence_static")
  p.add_argument("--prompt-mode", default="engine")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--unroll", type=_ints, default=[1],
                  help="comma list: 1 = layers unrolled (decode.unroll_layers), 0 = scanned")
  p.add_argument("--attention", default="dense",
                 help="attention kernel (model.attention: dense, splash, cudnn)")
  p.add_argument("--family", default="sdar", choices=sorted(families.FAMILIES),
                 help="model family of the random model")
  p.add_argument("--caches", default="none,prefix,dual",
                 help="bidirectional families: comma list of decode.cache settings")
  p.add_argument("--model", default="",
                 help="a model dir or HF dir to decode instead of random weights")
  peer.add_flags(p, _ints)
  return p.parse_args(argv)


def _timed(fn, *args):
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return {k: np.asarray(v) for k, v in out.items()}, time.perf_counter() - t0


def run_one(cfg, dcfg, params, ids, lens, make=make_generate, repeats=1):
  """(outputs, compile seconds, run seconds) of the decoder ``make(cfg, dcfg)``: AOT
  compile, then the median of ``repeats`` timed runs (after a warm one when repeats > 1)."""
  fn = make(cfg, dcfg)
  params = decode_params(params, dcfg)  # as batched.decode: once, outside the timed calls
  rng = jax.random.split(jax.random.key(0), ids.shape[0])  # the executable's [B] row keys
  t0 = time.perf_counter()
  compiled = fn.lower(params, ids, lens, rng).compile()
  compile_s = time.perf_counter() - t0
  if repeats > 1:
    _timed(compiled, params, ids, lens, rng, fn.knobs)
  runs = [_timed(compiled, params, ids, lens, rng, fn.knobs) for _ in range(repeats)]
  return runs[0][0], compile_s, float(np.median([r[1] for r in runs]))


def _model(a):
  """(cfg, params): ``--model``'s, or random weights of ``--family`` at the flags' sizes."""
  if a.model:
    from t3d_jax.convert import load_params
    params, cfg = load_params(a.model)
    cfg = cfg.replace(dtype=a.dtype, attention=a.attention)
    return cfg, jax.tree.map(lambda x: jax.numpy.asarray(x, a.dtype), params)
  cfg = families.get(a.family).config_class(
      vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
      num_layers=a.layers, num_heads=a.heads, num_kv_heads=a.kv_heads, head_dim=a.head_dim,
      tie_word_embeddings=a.tie, dtype=a.dtype, param_dtype=a.dtype, attention=a.attention)
  return cfg, init_params(cfg, jax.random.key(a.seed))


def _print_table(header, rows, cells) -> None:
  print(" | ".join(header))
  print(" | ".join("---" for _ in header))
  for row in rows:
    print(" | ".join(cells(row)))


def bidirectional(a, cfg, params, ids, lens, base) -> int:
  """Each s x cache, timed; tokens compared with cache none at the same s."""
  rows, exact = [], {}
  for s in a.steps:
    for cache in a.caches.split(","):
      out, c, r = run_one(cfg, base.replace(denoising_steps=s, cache=cache), params, ids,
                          lens, repeats=a.repeats)
      exact.setdefault(s, out)
      ref = exact[s]
      same = (out["ids"] == ref["ids"]).mean()
      whole = np.mean([(out["ids"][i] == ref["ids"][i]).all() for i in range(len(lens))])
      rows.append([f"canvas/{cache}", s, c, r, out["lengths"].sum() / r, out["nfe"].mean(),
                   out["lengths"].sum() / out["nfe"].sum(), same, whole])
      _progress(rows[-1])
  none = {row[1]: row[4] for row in rows if row[0] == "canvas/none"}
  _print_table(("decoder", "s", "compile_s", "run_s", "tok/s", "NFE/seq", "TPF", "vs none",
                "tokens as none", "sequences as none"), rows, lambda row: [
      row[0], str(row[1]), f"{row[2]:.1f}", f"{row[3]:.2f}", f"{row[4]:.1f}", f"{row[5]:.1f}",
      f"{row[6]:.2f}", f"{row[4] / none[row[1]]:.2f}x" if row[1] in none else "-",
      f"{row[7]:.1%}", f"{row[8]:.0%}"])
  print(f"# first listed cache at each s is the reference of the agreement columns "
        f"({a.caches.split(',')[0]})")
  return 0


def main(argv=None) -> int:
  a = parse(argv or [])
  cfg, params = _model(a)
  fam = families.of_config(cfg)
  a.vocab = cfg.vocab_size
  n_params = sum(x.size for x in jax.tree.leaves(params))
  if a.peer:
    print(f"# {jax.devices()[0].platform} x{jax.device_count()}, {n_params / 1e6:.1f}M params "
          f"({a.layers} layers, hidden {a.hidden}, vocab {a.vocab}, {a.dtype})", flush=True)
    return peer.run(a, cfg, params, make_generate)
  rs = np.random.RandomState(a.seed)
  lens = rs.randint(a.prompt_min, a.prompt_max + 1, size=a.batch).astype(np.int32)
  ids = rs.randint(0, a.vocab - 1, size=(a.batch, int(lens.max()))).astype(np.int32)
  mask = cfg.mask_token_id if cfg.mask_token_id is not None else a.vocab - 1
  ids = np.where(ids == mask, 0, ids).astype(np.int32)
  base = DecodeConfig(block_size=a.block, max_new_tokens=a.max_new, mask_id=mask,
                      strategy=a.strategy, prompt_mode=a.prompt_mode)
  print(f"# {jax.devices()[0].platform} x{jax.device_count()}, {fam.name} "
        f"{'from ' + a.model if a.model else '(random)'}, {n_params / 1e6:.1f}M params "
        f"({cfg.num_layers} layers, hidden {cfg.hidden_size}, vocab {a.vocab}, {a.dtype}, "
        f"attention {a.attention}); batch {a.batch}, "
        f"prompts {lens.min()}-{lens.max()} tokens, {a.max_new} new, b={a.block}, "
        f"{a.strategy}, greedy", flush=True)
  if fam.attention == "bidirectional":
    return bidirectional(a, cfg, params, ids, lens, base)
  peak = limits.matmul_peak(dtype=a.dtype)
  rows, cached = [], {}
  header = ("decoder", "s", "compile_s", "run_s", "tok/s", "NFE/seq", "TPF", "MFU", "vs naive",
            "same as naive")
  for s in a.steps:
    for mode, unroll in itertools.product(a.modes.split(","), a.unroll):
      dcfg = base.replace(denoising_steps=s, commit_mode=mode, unroll_layers=bool(unroll))
      out, c, r = run_one(cfg, dcfg, params, ids, lens, repeats=a.repeats)
      name = f"cached/{mode}" + ("" if unroll else " (scanned layers)")
      cached[(s, name)] = out
      mfu = peer.decode_flops(cfg, dcfg, lens, out["nfe"]) / r / peak
      rows.append([name, s, c, r, out["lengths"].sum() / r, out["nfe"].mean(),
                   out["lengths"].sum() / out["nfe"].sum(), mfu, None, None])
      _progress(rows[-1])
  for s in a.naive_steps:
    dcfg = base.replace(denoising_steps=s)
    out, c, r = run_one(cfg, dcfg, params, ids, lens, make=make_naive_generate)
    tps = out["lengths"].sum() / r
    for row in rows:
      if row[1] == s:
        ref = cached[(s, row[0])]
        row[8] = row[4] / tps
        row[9] = all((ref[k] == out[k]).all() for k in ("ids", "step_map", "lengths"))
    rows.append(["naive", s, c, r, tps, out["nfe"].mean(),
                 out["lengths"].sum() / out["nfe"].sum(), None, 1.0, True])
    _progress(rows[-1])
  _print_table(header, rows, lambda row: [
      row[0], str(row[1]), f"{row[2]:.1f}", f"{row[3]:.2f}", f"{row[4]:.1f}",
      f"{row[5]:.1f}", f"{row[6]:.2f}", "-" if row[7] is None else f"{row[7]:.0%}",
      "-" if row[8] is None else f"{row[8]:.1f}x",
      "-" if row[9] is None else ("yes" if row[9] else "NO")])
  print(f"# MFU: decode model FLOPs / run time / matmul peak {peak / 1e9:.0f} GFLOP/s "
        f"({a.dtype}, measured in this run)")
  if any(row[9] is False for row in rows):
    print("# the cached decoder's outputs differ from the naive loop's (rows marked NO)")
    return 1
  return 0
