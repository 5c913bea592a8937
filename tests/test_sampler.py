"""Block-diffusion sampler tests (CPU, offline).

Parity is checked against an independent naive decoder written here: no KV cache, no
JAX; every denoising step recomputes the whole sequence (committed tokens + current
block) with transformers' Qwen3 under a full staircase block mask and picks tokens in
plain Python, one prompt at a time. Greedy: argmax, confidence and entropy from the
softmax at T = 1 (float64). The tiny model's lm_head is scaled so confidences spread
over (0, 1) (thresholds and entropy bounds then bite) and argmax decisions are not
near-ties.
"""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from scipy import stats

from hf_models import make_qwen3, torch_logits
from t3d_jax import masks
from t3d_jax.convert import load_params
from t3d_jax.models.sdar import SDARConfig, forward, init_params
from t3d_jax.sampling import (DecodeConfig, DecodeError, decode_params, generate,
                               make_generate)
from t3d_jax.sampling.batched import Executables
from t3d_jax.sampling.sampler import Knobs

VOCAB, MASK = 64, 63


def _softmax64(logits):
  x = logits.astype(np.float64)
  x = np.exp(x - x.max(-1, keepdims=True))
  return x / x.sum(-1, keepdims=True)


def _choose(strategy, cand, n, conf, ent, threshold, bound):
  """Positions (block indices) to reveal among the masked ``cand`` (ascending)."""
  by_conf = sorted(cand, key=lambda i: (-conf[i], i))
  if strategy == "sequential":
    return cand[:n]
  if strategy == "low_confidence_static":
    return by_conf[:n]
  if strategy == "low_confidence_dynamic":
    above = [i for i in cand if conf[i] > threshold]
    return above if len(above) >= n else by_conf[:n]
  if strategy == "entropy_bounded":
    chosen, total = [], 0.0
    for i in sorted(cand, key=lambda i: (ent[i], i)):
      total += ent[i]
      if total >= bound:
        break
      chosen.append(i)
    return chosen or [min(cand, key=lambda i: (ent[i], i))]
  raise ValueError(strategy)


def naive_decode(model, prompt, *, block_size, steps, strategy, max_new, mask_id,
                 stop_ids=(), threshold=0.9, bound=0.35, prompt_mode="engine",
                 reveal_all_on_last_step=True):
  """Greedy block-diffusion decode of one prompt (list of ids).

  Returns dict(ids, step_map, length, steps, blocks): generated ids and per-token global
  step of first reveal (1-based), the number of denoising steps run and blocks decoded.
  """
  b, p = block_size, len(prompt)
  first = (p // b) * b if prompt_mode == "engine" else p
  offset = 0 if prompt_mode == "engine" else (-p) % b
  sched = [b // steps + (i < b % steps) for i in range(steps)]
  seq = list(prompt[:first])
  block = list(prompt[first:]) + [mask_id] * (b - (p - first))
  masked = [i >= p - first for i in range(b)]
  out, smap, step, blocks = [], [], 0, 0
  while True:
    blocks += 1
    reveal = [0] * b
    for t in range(steps):
      cand = [i for i in range(b) if masked[i]]
      if not cand:
        break
      ids = seq + block
      n_tok = len(ids)
      blk = (np.arange(n_tok) + offset) // b
      mask = blk[None, :] <= blk[:, None]
      logits = torch_logits(model, np.array([ids]), mask[None], np.arange(n_tok)[None])[0, -b:]
      probs = _softmax64(logits)
      x0 = logits.argmax(-1)
      conf = probs[np.arange(b), x0]
      ent = -(probs * np.log(np.maximum(probs, 1e-300))).sum(-1)
      n = min(sched[t], len(cand))
      if t == steps - 1 and reveal_all_on_last_step:
        chosen = cand
      else:
        chosen = _choose(strategy, cand, n, conf, ent, threshold, bound)
      step += 1
      for i in chosen:
        block[i], masked[i], reveal[i] = int(x0[i]), False, step
    for i in range(b):
      if len(seq) + i < p:        # prompt tail
        continue
      out.append(block[i])
      smap.append(reveal[i])
      if block[i] in stop_ids or len(out) == max_new:
        return dict(ids=out, step_map=smap, length=len(out), steps=step, blocks=blocks)
    seq += block
    block, masked = [mask_id] * b, [True] * b


# ----------------------------------------------------------------------------- fixtures

PROMPT_LENS = [5, 8, 3, 12, 1, 6]   # tails mod 4: 1 0 3 0 1 2; mod 2: 1 0 1 0 1 0
N_NEW = 10
THRESHOLD, BOUND = 0.9, 1.0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """(torch model, params, cfg): a tiny Qwen3 with its lm_head scaled 30x."""
  d = tmp_path_factory.mktemp("qwen3_sampler")
  model = make_qwen3(d, vocab_size=VOCAB)
  with torch.no_grad():
    model.lm_head.weight.mul_(30.0)
  model.save_pretrained(d)
  params, cfg = load_params(d)
  return model, params, cfg


def make_prompts(lens, seed=0):
  rs = np.random.RandomState(seed)
  return [rs.randint(0, MASK, size=n).tolist() for n in lens]


def pad_batch(prompts, width=None):
  width = max(len(p) for p in prompts) if width is None else width
  ids = np.zeros((len(prompts), width), np.int32)
  for r, p in enumerate(prompts):
    ids[r, :len(p)] = p
  return ids, np.array([len(p) for p in prompts], np.int32)


# this module's compiled decoders, one set per (model config, mesh), held as a Decoder holds
# them: the tests of one setting reuse its compilation (the library keeps no global cache)
HELD: dict = {}


def held(cfg, mesh=None) -> Executables:
  return HELD.setdefault((cfg, mesh), Executables(cfg, mesh))


def decode(params, cfg, prompts, rng=0, width=None, mesh=None, **kw):
  dcfg = DecodeConfig(mask_id=MASK, **kw)
  ids, lens = pad_batch(prompts, width)
  out = held(cfg, mesh).run(dcfg)(params, ids, lens, jax.random.key(rng), Knobs.of(dcfg))
  return {k: np.asarray(v) for k, v in out.items()}, dcfg


def expect_rows(out, dcfg, refs):
  """Every row of ``out`` equals the naive reference, tokens, step_map, length and NFE."""
  for r, ref in enumerate(refs):
    n = ref["length"]
    assert out["lengths"][r] == n, f"row {r}"
    np.testing.assert_array_equal(out["ids"][r, :n], ref["ids"], err_msg=f"ids row {r}")
    np.testing.assert_array_equal(out["step_map"][r, :n], ref["step_map"],
                                  err_msg=f"step_map row {r}")
    assert (out["ids"][r, n:] == dcfg.pad).all() and (out["step_map"][r, n:] == 0).all()
    commits = ref["blocks"] - 1 if dcfg.commit_mode == "separate" else 0
    assert out["nfe"][r] == ref["steps"] + commits, f"nfe row {r}"


def gen_block(lens, b, prompt_mode="engine"):
  """[B, N_NEW] index of the generated block each output position belongs to."""
  tail = np.array([n % b if prompt_mode == "engine" else 0 for n in lens])
  return (np.arange(N_NEW)[None, :] + tail[:, None]) // b


# ----------------------------------------------------------------------------- parity

BS = [(2, 1), (2, 2), (4, 1), (4, 2), (4, 4)]
STRATS = ["sequential", "low_confidence_static", "low_confidence_dynamic", "entropy_bounded"]
DEFAULT = {("sequential", 4, 4, "separate"), ("sequential", 2, 1, "fused"),
           ("low_confidence_static", 4, 2, "fused"), ("low_confidence_static", 2, 2, "separate"),
           ("low_confidence_static", 4, 1, "fused"), ("entropy_bounded", 4, 1, "fused"),
           ("low_confidence_dynamic", 4, 4, "fused"), ("low_confidence_dynamic", 4, 1, "separate"),
           ("entropy_bounded", 4, 2, "separate"), ("entropy_bounded", 2, 2, "fused")}
GRID = [pytest.param(st, b, s, m, marks=() if (st, b, s, m) in DEFAULT else pytest.mark.slow)
        for st, (b, s), m in itertools.product(STRATS, BS, ["separate", "fused"])]


@pytest.fixture(scope="module")
def naive_refs(tiny):
  model = tiny[0]
  memo = {}

  def get(prompts, **kw):
    key = (tuple(map(tuple, prompts)), tuple(sorted(kw.items())))
    if key not in memo:
      memo[key] = [naive_decode(model, p, mask_id=MASK, **kw) for p in prompts]
    return memo[key]
  return get


@pytest.mark.parametrize("strategy,b,s,mode", GRID)
def test_greedy_parity_with_naive_recompute(tiny, naive_refs, strategy, b, s, mode):
  _, params, cfg = tiny
  prompts = make_prompts(PROMPT_LENS)
  out, dcfg = decode(params, cfg, prompts, block_size=b, denoising_steps=s, strategy=strategy,
                     max_new_tokens=N_NEW, commit_mode=mode, threshold=THRESHOLD,
                     entropy_bound=BOUND)
  refs = naive_refs(prompts, block_size=b, steps=s, strategy=strategy, max_new=N_NEW,
                    threshold=THRESHOLD, bound=BOUND)
  expect_rows(out, dcfg, refs)
  assert len({tuple(r["ids"]) for r in refs}) >= 4  # not one degenerate output for all rows


@pytest.mark.parametrize("strategy,b,s,mode", [
    ("low_confidence_static", 4, 2, "fused"),
    pytest.param("entropy_bounded", 4, 4, "separate", marks=pytest.mark.slow),
    pytest.param("sequential", 2, 1, "fused", marks=pytest.mark.slow)])
def test_aligned_prompt_mode_parity(tiny, naive_refs, strategy, b, s, mode):
  _, params, cfg = tiny
  prompts = make_prompts(PROMPT_LENS, seed=1)
  out, dcfg = decode(params, cfg, prompts, block_size=b, denoising_steps=s, strategy=strategy,
                     max_new_tokens=N_NEW, commit_mode=mode, prompt_mode="aligned",
                     entropy_bound=BOUND)
  refs = naive_refs(prompts, block_size=b, steps=s, strategy=strategy, max_new=N_NEW,
                    bound=BOUND, prompt_mode="aligned")
  expect_rows(out, dcfg, refs)


@pytest.mark.parametrize("mode", ["separate", "fused"])
def test_scanned_layers_parity(tiny, naive_refs, mode):
  """decode.unroll_layers=False (the layers scanned over the stacked weights, as in
  training) decodes as the default unrolled layers do: both equal the naive decoder."""
  _, params, cfg = tiny
  prompts = make_prompts(PROMPT_LENS)
  kw = dict(block_size=4, denoising_steps=2, strategy="low_confidence_dynamic",
            max_new_tokens=N_NEW, commit_mode=mode, threshold=THRESHOLD)
  out, dcfg = decode(params, cfg, prompts, unroll_layers=False, **kw)
  assert not dcfg.unroll_layers
  refs = naive_refs(prompts, block_size=4, steps=2, strategy="low_confidence_dynamic",
                    max_new=N_NEW, threshold=THRESHOLD)
  expect_rows(out, dcfg, refs)


def test_stop_ids_cut_block_and_finish(tiny, naive_refs):
  _, params, cfg = tiny
  prompts = make_prompts(PROMPT_LENS, seed=2)
  kw = dict(block_size=4, denoising_steps=2, max_new_tokens=N_NEW, commit_mode="separate")
  free, _ = decode(params, cfg, prompts, **kw)
  stop = int(free["ids"][0, 5])      # a token the model does produce, mid-sequence
  out, dcfg = decode(params, cfg, prompts, stop_ids=(stop,), **kw)
  hit = 0
  for r in range(len(prompts)):
    where = np.flatnonzero(free["ids"][r] == stop)
    n = int(where[0]) + 1 if where.size else N_NEW
    hit += n < N_NEW
    assert out["lengths"][r] == n
    np.testing.assert_array_equal(out["ids"][r, :n], free["ids"][r, :n])
    np.testing.assert_array_equal(out["step_map"][r, :n], free["step_map"][r, :n])
    assert (out["ids"][r, n:] == MASK).all() and (out["step_map"][r, n:] == 0).all()
    assert out["nfe"][r] <= free["nfe"][r]
  assert hit >= 1 and out["nfe"][0] < free["nfe"][0]
  refs = naive_refs(prompts, block_size=4, steps=2, strategy="low_confidence_static",
                    max_new=N_NEW, stop_ids=(stop,))
  expect_rows(out, dcfg, refs)


def test_max_new_tokens_exact_and_prefix_stable(tiny):
  _, params, cfg = tiny
  prompts = make_prompts(PROMPT_LENS, seed=3)
  short, _ = decode(params, cfg, prompts, block_size=4, denoising_steps=2, max_new_tokens=7)
  long, _ = decode(params, cfg, prompts, block_size=4, denoising_steps=2, max_new_tokens=N_NEW)
  assert short["ids"].shape == (len(prompts), 7) and (short["lengths"] == 7).all()
  assert (long["lengths"] == N_NEW).all()
  np.testing.assert_array_equal(short["ids"], long["ids"][:, :7])
  np.testing.assert_array_equal(short["step_map"], long["step_map"][:, :7])
  assert (short["step_map"] > 0).all()


def test_dynamic_threshold_and_fallback(tiny):
  _, params, cfg = tiny
  prompts = make_prompts(PROMPT_LENS, seed=4)
  kw = dict(block_size=4, denoising_steps=4, max_new_tokens=N_NEW)
  static, _ = decode(params, cfg, prompts, strategy="low_confidence_static", **kw)
  never, _ = decode(params, cfg, prompts, strategy="low_confidence_dynamic", threshold=2.0, **kw)
  for k in static:                   # nothing passes the threshold: the static count
    np.testing.assert_array_equal(never[k], static[k], err_msg=k)
  always, _ = decode(params, cfg, prompts, strategy="low_confidence_dynamic", threshold=-1.0,
                     **kw)
  blk = gen_block(PROMPT_LENS, 4)     # everything passes: one step per block
  np.testing.assert_array_equal(always["step_map"], blk + 1)
  np.testing.assert_array_equal(always["nfe"], blk[:, -1] + 1)
  mid, _ = decode(params, cfg, prompts, strategy="low_confidence_dynamic", threshold=0.9, **kw)
  assert (mid["nfe"] < static["nfe"]).any() and (mid["nfe"] > always["nfe"]).any()


def test_entropy_bound(tiny):
  _, params, cfg = tiny
  prompts = make_prompts(PROMPT_LENS, seed=5)
  kw = dict(block_size=4, max_new_tokens=N_NEW, strategy="entropy_bounded")
  blk = gen_block(PROMPT_LENS, 4)
  one, _ = decode(params, cfg, prompts, denoising_steps=4, entropy_bound=0.0, **kw)
  for r in range(len(prompts)):      # at least one token per step: steps are distinct
    for g in np.unique(blk[r]):
      st = np.sort(one["step_map"][r][blk[r] == g])
      assert (np.diff(st) == 1).all(), (r, g, st)
  every, _ = decode(params, cfg, prompts, denoising_steps=4, entropy_bound=1e9, **kw)
  np.testing.assert_array_equal(every["step_map"], blk + 1)
  left, _ = decode(params, cfg, prompts, denoising_steps=2, entropy_bound=0.0,
                   reveal_all_on_last_step=False, **kw)
  filled, _ = decode(params, cfg, prompts, denoising_steps=2, entropy_bound=0.0, **kw)
  for r, n in enumerate(PROMPT_LENS):
    for g in np.unique(blk[r]):
      sel = blk[r] == g
      tail = n % 4 if g == 0 else 0
      masked_left = max(0, 4 - tail - 2)
      full = g < blk[r, -1] or (N_NEW + n % 4) % 4 == 0
      if full:
        assert (left["step_map"][r][sel] == 0).sum() == masked_left
        assert (left["ids"][r][sel] == MASK).sum() >= masked_left
      assert (filled["step_map"][r][sel] > 0).all()


def test_batch_invariance(tiny):
  _, params, cfg = tiny
  lens = [3, 9, 4, 12, 7, 1, 10, 6]
  prompts = make_prompts(lens, seed=6)
  kw = dict(block_size=4, denoising_steps=2, max_new_tokens=N_NEW, strategy="entropy_bounded",
            entropy_bound=BOUND)
  full, _ = decode(params, cfg, prompts, **kw)
  for r, p in enumerate(prompts):
    for width in {max(lens), len(p)} if r in (1, 5) else {max(lens)}:
      alone, _ = decode(params, cfg, [p], width=width, **kw)
      for k in full:
        np.testing.assert_array_equal(alone[k][0], full[k][r], err_msg=f"{k} row {r} w{width}")


# ----------------------------------------------------------------------------- sampling

def _sampling_model():
  cfg = SDARConfig(vocab_size=8, hidden_size=32, intermediate_size=48, num_layers=1,
                   num_heads=2, num_kv_heads=1, head_dim=16)
  params = init_params(cfg, jax.random.key(3))
  params["lm_head"] = params["lm_head"] * 40.0
  return params, cfg


def _first_step_logits(params, cfg, prompt, b):
  ids = jnp.asarray([list(prompt) + [7] * b])
  n = ids.shape[1]
  return np.asarray(forward(params, cfg, ids, masks.staircase_mask(n, b)[None],
                            jnp.arange(n)[None]), np.float64)[0, -b:]


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 3, 1.0),
                                                     (1.0, 0, 0.8)])
def test_first_step_frequencies_match_softmax(temperature, top_k, top_p):
  params, cfg = _sampling_model()
  rows, b, prompt = 4000, 4, [1, 2, 3, 4]
  dcfg = DecodeConfig(block_size=b, denoising_steps=1, max_new_tokens=b, mask_id=7,
                      temperature=temperature, top_k=top_k, top_p=top_p)
  ids = np.tile(np.asarray(prompt, np.int32), (rows, 1))
  out = generate(params, cfg, ids, np.full(rows, 4, np.int32), jax.random.key(11), dcfg)
  toks = np.asarray(out["ids"])
  logits = _first_step_logits(params, cfg, prompt, b) / temperature
  for j in range(b):
    keep = np.ones(8, bool)
    if top_k:
      keep &= logits[j] >= np.sort(logits[j])[-top_k]
    p = np.exp(logits[j] - logits[j].max())
    p /= p.sum()
    if top_p < 1:
      order = np.argsort(-p)
      before = np.cumsum(p[order]) - p[order]
      keep[order[before > top_p]] = False
    p = np.where(keep, p, 0) / p[keep].sum()
    counts = np.bincount(toks[:, j], minlength=8)
    assert counts[~keep].sum() == 0, f"position {j}: filtered tokens were drawn"
    big = p * rows >= 5                 # chi-square needs expected counts >= 5: pool the rest
    exp = np.append(p[big] * rows, p[~big].sum() * rows)
    obs = np.append(counts[big], counts[~big].sum())
    if exp[-1] < 5:
      exp, obs = exp[:-1], obs[:-1]
      exp *= obs.sum() / exp.sum()
    assert big.sum() >= 2, "degenerate distribution: the test would be vacuous"
    assert stats.chisquare(obs, exp).pvalue > 1e-3, (j, obs, exp)
    wrong = np.roll(exp, 1)            # the same test rejects a wrong distribution
    assert stats.chisquare(obs, wrong * obs.sum() / wrong.sum()).pvalue < 1e-6


def test_rng_determinism(tiny):
  _, params, cfg = tiny
  prompts = make_prompts(PROMPT_LENS, seed=7)
  kw = dict(block_size=4, denoising_steps=2, max_new_tokens=N_NEW, temperature=1.0)
  a, _ = decode(params, cfg, prompts, rng=1, **kw)
  b, _ = decode(params, cfg, prompts, rng=1, **kw)
  c, _ = decode(params, cfg, prompts, rng=2, **kw)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert (a["ids"] != c["ids"]).any()


# ----------------------------------------------------------------------------- sharding

@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_sharded_over_data_matches_single_device(tiny, temperature):
  assert jax.device_count() >= 8, "conftest sets 8 host devices"
  _, params, cfg = tiny
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("data",))
  prompts = make_prompts([3, 9, 4, 12, 7, 1, 10, 6], seed=8)
  kw = dict(block_size=4, denoising_steps=2, max_new_tokens=N_NEW, temperature=temperature,
            strategy="low_confidence_dynamic")
  single, _ = decode(params, cfg, prompts, **kw)
  dcfg = DecodeConfig(mask_id=MASK, **kw)
  ids, lens = pad_batch(prompts)
  out = generate(params, cfg, ids, lens, jax.random.key(0), dcfg, mesh=mesh)
  assert out["ids"].sharding.spec[0] == "data"
  assert len(out["ids"].sharding.device_set) == 8
  for k in single:
    np.testing.assert_array_equal(np.asarray(out[k]), single[k], err_msg=k)


def test_decode_params_split_once_for_many_calls(tiny):
  """decode_params (the layers split once for many calls, as batched.decode passes them)
  decodes the same tokens as the stacked params, and its decoder holds no per-call copy
  of the layer weights: XLA's temporary bytes drop by at least their size. With a mesh
  the split params are replicated on it, as the decoder takes them."""
  _, params, cfg = tiny
  prompts = make_prompts([3, 9, 4, 12, 7, 1, 10, 6], seed=5)
  ids, lens = pad_batch(prompts)
  dcfg = DecodeConfig(mask_id=MASK, block_size=4, denoising_steps=2, max_new_tokens=N_NEW,
                      strategy="low_confidence_dynamic")
  split = decode_params(params, dcfg)
  assert "layers" not in split and decode_params(split, dcfg) is split
  assert decode_params(params, dcfg.replace(unroll_layers=False)) is params
  fn = make_generate(cfg, dcfg)
  rng = jax.random.split(jax.random.key(0), len(prompts))
  ref, out = (fn(p, ids, lens, rng) for p in (params, split))
  for k in ref:
    np.testing.assert_array_equal(np.asarray(out[k]), np.asarray(ref[k]), err_msg=k)
  temp = [fn.lower(p, ids, lens, rng).compile().memory_analysis().temp_size_in_bytes
          for p in (params, split)]
  assert temp[0] - temp[1] >= sum(x.nbytes for x in jax.tree.leaves(params["layers"]))
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("data",))
  on_mesh = decode_params(params, dcfg, mesh)
  for x in jax.tree.leaves(on_mesh):
    assert x.sharding.is_fully_replicated and len(x.sharding.device_set) == 8
  sharded = make_generate(cfg, dcfg, mesh=mesh)(on_mesh, ids, lens, rng)
  for k in ref:
    np.testing.assert_array_equal(np.asarray(sharded[k]), np.asarray(ref[k]), err_msg=k)


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kw,lens,match", [
    (dict(max_length=16, max_new_tokens=8), [12, 3], "prompt too long: row 0 has 12"),
    (dict(max_length=18, max_new_tokens=8), [4, 3], "max_length=18 is not a multiple of "
                                                    "block_size=4"),
    (dict(mask_id=None), [4, 3], "mask_id is required"),
    (dict(mask_id=VOCAB), [4, 3], "mask_id=64 is outside the vocabulary"),
    (dict(stop_ids=(MASK,)), [4, 3], "also a stop id"),
    (dict(strategy="greedy"), [4, 3], "strategy 'greedy'"),
    (dict(denoising_steps=0), [4, 3], "denoising_steps"),
    (dict(top_p=0.0), [4, 3], "top_p"),
    (dict(), [4, 13], r"prompt_lens must lie in \[0, 12\]"),
])
def test_bad_input_raises_clear_error(tiny, kw, lens, match):
  _, params, cfg = tiny
  kw = dict(dict(mask_id=MASK), **kw)
  ids = np.zeros((2, 12), np.int32)
  with pytest.raises(DecodeError, match=match):
    generate(params, cfg, ids, np.array(lens), jax.random.key(0), DecodeConfig(**kw))


def test_batch_not_divisible_by_mesh(tiny):
  _, params, cfg = tiny
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("data",))
  run = make_generate(cfg, DecodeConfig(mask_id=MASK, max_new_tokens=4), mesh)
  with pytest.raises(DecodeError, match="batch 6 is not a multiple"):
    run(params, np.zeros((6, 4), np.int32), np.full(6, 4), jax.random.key(0))


def test_naive_recompute_baseline_matches_cached(tiny):
  """The benchmark's no-cache baseline decodes exactly as the cached sampler."""
  from t3d_jax.bench.naive_decode import make_naive_generate
  _, params, cfg = tiny
  prompts = make_prompts(PROMPT_LENS, seed=9)
  ids, lens = pad_batch(prompts)
  for mode in ("engine", "aligned"):
    dcfg = DecodeConfig(mask_id=MASK, block_size=4, denoising_steps=2, max_new_tokens=N_NEW,
                        strategy="entropy_bounded", entropy_bound=BOUND, prompt_mode=mode)
    ref = generate(params, cfg, ids, lens, jax.random.key(0), dcfg)
    out = make_naive_generate(cfg, dcfg)(params, ids, lens, jax.random.key(0))
    for k in ref:
      np.testing.assert_array_equal(np.asarray(out[k]), np.asarray(ref[k]), err_msg=k)


def test_batched_decode_groups_pads_and_restores_order(tiny):
  from t3d_jax.sampling.batched import decode_part as rollout
  _, params, cfg = tiny
  lens = [7, 2, 12, 5, 9]
  prompts = make_prompts(lens, seed=10)
  kw = dict(block_size=4, denoising_steps=2, max_new_tokens=N_NEW, stop_ids=(24,))
  full, _ = decode(params, cfg, prompts, **kw)
  seen = []
  rows = rollout(params, cfg, prompts, DecodeConfig(mask_id=MASK, **kw), jax.random.key(0),
                 batch_size=2, width_multiple=8, progress=seen.append)
  assert seen == [2, 4, 5] and len(rows) == len(prompts)
  for r, row in enumerate(rows):
    n = int(full["lengths"][r])
    assert row["length"] == n == len(row["response_ids"]) == len(row["step_map"])
    assert row["response_ids"] == full["ids"][r, :n].tolist()
    assert row["step_map"] == full["step_map"][r, :n].tolist()
    assert row["nfe"] == full["nfe"][r]
  with pytest.raises(DecodeError, match="prompt too long: prompt 2 has 12"):
    rollout(params, cfg, prompts, DecodeConfig(mask_id=MASK, max_length=20, **kw),
            jax.random.key(0))


def test_batched_decode_parts_together_equal_the_whole(tiny):
  """part=(i, 2) decodes every other batch with the whole run's rngs (what each of two
  processes does); packed into int32 rows and merged, the parts equal the whole."""
  from t3d_jax.sampling.batched import decode_part as rollout, pack_results, unpack_results
  _, params, cfg = tiny
  prompts = make_prompts([7, 2, 12, 5, 9], seed=10)
  dcfg = DecodeConfig(mask_id=MASK, block_size=4, denoising_steps=2, max_new_tokens=N_NEW,
                      temperature=1.0)  # sampled: each batch's rng matters
  kw = dict(batch_size=2, width_multiple=8)
  whole = rollout(params, cfg, prompts, dcfg, jax.random.key(3), **kw)
  parts = [rollout(params, cfg, prompts, dcfg, jax.random.key(3), part=(i, 2), **kw)
           for i in range(2)]
  # by length: batches [1, 3], [0, 4], [2]; part 0 decodes batches 0 and 2
  assert [r is not None for r in parts[0]] == [False, True, True, True, False]
  packed = np.stack([pack_results(p, N_NEW) for p in parts])
  assert packed.dtype == np.int32 and packed.shape == (2, 5, 3 + 2 * N_NEW)
  assert (packed[:, :, 0].sum(0) == 1).all()
  merged = unpack_results(packed[packed[:, :, 0].argmax(0), np.arange(5)])
  assert merged == whole
  assert unpack_results(pack_results(parts[1], N_NEW)) == parts[1]
  with pytest.raises(DecodeError, match=r"part \(2, 2\)"):
    rollout(params, cfg, prompts, dcfg, jax.random.key(3), part=(2, 2), **kw)


def test_sampling_is_batch_invariant(tiny):
  """At T > 0 (top-p on) a sequence's tokens depend on (rng, question, sample) alone: batch
  1, 7 and 16, another padding width, a data-parallel mesh and split parts all give the
  same ids and step maps; another sample index or rng gives others (the check can fail)."""
  from t3d_jax.sampling.batched import decode_part
  from t3d_jax.sampling.steps import row_keys
  _, params, cfg = tiny
  prompts = make_prompts([7, 2, 12, 5, 9, 3, 11, 4, 6, 8, 1, 10, 2, 7, 5, 9], seed=12)
  ids_of = [(i // 2, i % 2) for i in range(len(prompts))]
  dcfg = DecodeConfig(mask_id=MASK, block_size=4, denoising_steps=2, max_new_tokens=N_NEW,
                      temperature=1.0, top_p=0.95, strategy="low_confidence_dynamic")
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("data",))

  def run(batch_size, width_multiple=8, rng=3, sample_ids=ids_of, mesh=None, **kw):
    rows = decode_part(params, cfg, prompts, dcfg, jax.random.key(rng), batch_size=batch_size,
                       width_multiple=width_multiple, sample_ids=sample_ids, mesh=mesh,
                       executables=held(cfg, mesh), **kw)
    return [r and (r["response_ids"], r["step_map"]) for r in rows]

  want = run(1)
  assert run(7) == want and run(16) == want and run(7, width_multiple=32) == want
  assert run(16, mesh=mesh) == want
  halves = [run(7, part=(i, 2)) for i in range(2)]  # what each of 2 processes decodes
  assert [a or b for a, b in zip(*halves)] == want and None in halves[0]
  assert run(7, rng=4) != want
  other = run(7, sample_ids=[(q, s + 1) for q, s in ids_of])
  assert sum(a != b for a, b in zip(other, want)) >= len(want) // 2
  # the sampler's own call: one key per row, a single key meaning fold_in(key, row)
  ids, lens = pad_batch(prompts[:4])
  one = generate(params, cfg, ids, lens, jax.random.key(5), dcfg)
  rows = generate(params, cfg, ids, lens, row_keys(jax.random.key(5), np.arange(4)), dcfg)
  np.testing.assert_array_equal(np.asarray(one["ids"]), np.asarray(rows["ids"]))
  with pytest.raises(DecodeError, match=r"expected one key or 4 keys"):
    generate(params, cfg, ids, lens, row_keys(jax.random.key(5), np.arange(3)), dcfg)
  with pytest.raises(DecodeError, match=r"sample_ids: 2 \(question, sample\) pairs for 16"):
    run(4, sample_ids=[(0, 0), (1, 0)])


def test_unknown_strategy_names_the_known_ones():
  from t3d_jax.sampling import STRATEGIES, strategies
  masked = jnp.ones((1, 4), bool)
  with pytest.raises(ValueError, match="unknown strategy 'greedy'; known: " + ", ".join(STRATEGIES)):
    strategies.select("greedy", masked, masked.astype(jnp.float32), None, jnp.array([1]),
                      threshold=0.9, bound=0.3)
  with pytest.raises(DecodeError, match="strategy 'greedy' is not one of"):
    DecodeConfig(mask_id=MASK, strategy="greedy").validate()


class CompileCounter:
  """Counts XLA backend compilations (jax.monitoring's compile-duration events)."""
  EVENT = "/jax/core/compile/backend_compile_duration"

  def __init__(self):
    self.n = 0

  def __call__(self, event, duration, **kw):
    self.n += event == self.EVENT

  def __enter__(self):
    jax.monitoring.register_event_duration_secs_listener(self)
    return self

  def __exit__(self, *exc):
    jax.monitoring.unregister_event_duration_listener(self)


def test_traced_knobs_a_threshold_sweep_compiles_once(tiny, naive_refs):
  """Threshold, entropy bound, temperature, top-p and stop ids are values of one compiled
  decoder: after the first point of a sweep through batched decoding (timed, as eval
  runs it, its compilations held by one Executables as a Decoder holds them) nothing
  compiles, and each point equals the naive decoder at its threshold. A static field
  (denoising_steps) compiles anew: the counter counts."""
  from t3d_jax.sampling.batched import DecodeStats, decode_part
  _, params, cfg = tiny
  prompts = make_prompts(PROMPT_LENS, seed=11)
  base = DecodeConfig(mask_id=MASK, block_size=4, denoising_steps=4, max_new_tokens=N_NEW,
                      strategy="low_confidence_dynamic")
  compiled = Executables(cfg)
  run = lambda d: decode_part(params, cfg, prompts, d, jax.random.key(0),  # noqa: E731
                              batch_size=len(prompts), width_multiple=16, stats=DecodeStats(),
                              executables=compiled)
  nfe = {}
  with CompileCounter() as first:
    rows = run(base.replace(threshold=0.3))
  with CompileCounter() as sweep:
    for t in (0.3, 0.5, 0.7, 0.9, 0.99):
      rows = run(base.replace(threshold=t))
      refs = naive_refs(prompts, block_size=4, steps=4, strategy="low_confidence_dynamic",
                        max_new=N_NEW, threshold=t)
      for row, ref in zip(rows, refs):
        assert (row["response_ids"], row["step_map"], row["nfe"]) == \
            (list(ref["ids"]), list(ref["step_map"]), ref["steps"])
      nfe[t] = sum(r["nfe"] for r in rows)
    for kw in (dict(temperature=0.7), dict(temperature=0.7, top_p=0.8),
               dict(stop_ids=(3, 5, 7)), dict(entropy_bound=0.1)):
      run(base.replace(**kw))
  assert first.n >= 1 and sweep.n == 0, (first.n, sweep.n)
  assert nfe[0.3] < nfe[0.99]  # the threshold did change the decoding
  with CompileCounter() as other:
    run(base.replace(denoising_steps=2))
  assert other.n >= 1 and compiled.settings == 2  # one jit per static setting, held by the caller


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.0, 0, 1.0), (0.7, 3, 1.0),
                                                     (1.0, 0, 0.5)])
@pytest.mark.parametrize("traced", [False, True])
def test_choose_tokens_confidence_and_entropy_are_the_softmax(temperature, top_k, top_p,
                                                              traced):
  """confidence = the chosen token's probability and entropy = that of the distribution
  drawn from (greedy: the plain softmax), re-derived in numpy from the logits."""
  from t3d_jax.sampling import logits as logits_lib
  rng = np.random.RandomState(1)
  x = rng.randn(3, 4, 37).astype(np.float32) * 3
  keys = jax.random.split(jax.random.key(0), 3)
  temp = jnp.float32(temperature) if traced else temperature
  p = jnp.float32(top_p) if traced else top_p
  x0, conf, ent = jax.jit(lambda x, k, t, p: logits_lib.choose_tokens(
      x, k, t, top_k, p, with_entropy=True), static_argnums=() if traced else (2, 3))(
      jnp.asarray(x), keys, temp, p)
  x0 = np.asarray(x0)
  z = x.astype(np.float64) / (temperature or 1.0)
  if top_k:
    z = np.where(z >= np.sort(z, -1)[..., -top_k:-top_k + 1], z, -np.inf)
  if top_p < 1:
    q = np.exp(z - z.max(-1, keepdims=True))
    q /= q.sum(-1, keepdims=True)
    order = np.argsort(-q, -1)
    srt = np.take_along_axis(q, order, -1)
    drop = np.zeros_like(q, bool)
    np.put_along_axis(drop, order, (np.cumsum(srt, -1) - srt) > top_p, -1)
    z = np.where(drop, -np.inf, z)
  probs = np.exp(z - z.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  if temperature == 0:
    np.testing.assert_array_equal(x0, x.argmax(-1))
  assert np.all(np.take_along_axis(probs, x0[..., None], -1) > 0)  # drawn from the kept set
  np.testing.assert_allclose(conf, np.take_along_axis(probs, x0[..., None], -1)[..., 0],
                             rtol=1e-5, atol=1e-7)
  logp = np.log(np.where(probs > 0, probs, 1))
  np.testing.assert_allclose(ent, -(probs * logp).sum(-1), rtol=1e-5, atol=1e-6)
