"""T3D training examples (docs/method.md §2) against straightforward per-block references."""
import jax.numpy as jnp
import numpy as np
import pytest

from t3d_jax import masks
from t3d_jax.distill import examples as ex

PAD, MASK, VOCAB = 0, 1, 50
RATIOS = (1.0, 0.75, 0.5, 0.25)


def make_batch(b=24, l0=5, l1=21, seed=0, ties=True):
  """Random prompts (left-padded), responses (right-padded) and step maps with ties,
  -1 entries, and lengths ending inside / at the edge of blocks."""
  rng = np.random.default_rng(seed)
  plen = rng.integers(1, l0 + 1, size=b)
  prompt = rng.integers(2, VOCAB, size=(b, l0))
  prompt[np.arange(l0)[None] < (l0 - plen)[:, None]] = PAD
  rlen = rng.integers(1, l1 + 1, size=b)
  rlen[:3] = [l1, 8, 13]
  resp = rng.integers(2, VOCAB, size=(b, l1))
  inside = np.arange(l1)[None] < rlen[:, None]
  resp[~inside] = PAD
  if ties:
    step = rng.integers(1, 6, size=(b, l1)) + (np.arange(l1) // 8) * 10   # ties per block
    step[rng.random((b, l1)) < 0.1] = -1
  else:
    step = np.stack([rng.permutation(l1) + 1 for _ in range(b)])
  step[~inside] = -1
  return prompt, resp, step, rlen


def ref_original_trace(step, rlen, ratio, bs, argsort):
  """The released collect_training_data trace branch, per example and per block:
  step_map padded with 999999 past the response; sort valid entries; mask the first
  int(count * ratio) (ratio a float32 value)."""
  b, l1 = step.shape
  out = np.zeros((b, l1), bool)
  for i in range(b):
    sm = np.where(np.arange(l1) < rlen[i], step[i], 999999)
    r = float(np.float32(ratio[i]))
    for start in range(0, l1, bs):
      blk = sm[start:start + bs]
      idx = np.arange(start, min(start + bs, l1))
      valid = blk < 999999
      vidx, vsm = idx[valid], blk[valid]
      if len(vidx):
        order = argsort(vsm)
        n = int(len(vidx) * r)
        if n > 0:
          out[i, vidx[order[:n]]] = True
  return out


def build(prompt, resp, step, rlen, ratio_idx=None, seeds=None, **kw):
  cfg = ex.ExampleConfig(**kw)
  seeds = np.arange(len(resp)) if seeds is None else seeds
  return ex.build_examples(prompt, resp, step, seeds, cfg, pad_id=PAD, mask_id=MASK,
                           vocab_size=VOCAB, response_len=rlen, ratio_idx=ratio_idx)


def resp_part(out, l0, l1):
  return out["ids"][:, l0 + l1:], out["p_mask"][:, l0:]


# ----------------------------------------------------------------------------- trace masking

@pytest.mark.parametrize("bs", [4, 8])
@pytest.mark.parametrize("ridx", range(4))
def test_original_order_matches_released_loop(bs, ridx):
  prompt, resp, step, rlen = make_batch(seed=ridx)
  b, l1 = resp.shape
  ratio_idx = np.full(b, ridx)
  out = build(prompt, resp, step, rlen, ratio_idx, block_size=bs, mask_order="original",
              random_ratio=0.0, original_pads=True)
  ref = ref_original_trace(step, rlen, np.full(b, RATIOS[ridx]), bs,
                           lambda a: np.argsort(a, kind="stable"))
  xt, pm = resp_part(out, prompt.shape[1], l1)
  np.testing.assert_array_equal(pm, ref)
  np.testing.assert_array_equal(xt, np.where(ref, MASK, resp))   # pads visible (original)
  assert ref.any()


def test_original_order_ties_match_torch_argsort():
  torch = pytest.importorskip("torch")
  prompt, resp, step, rlen = make_batch(b=64, seed=9)
  b = len(resp)
  for ridx in range(4):
    ratio_idx = np.full(b, ridx)
    out = build(prompt, resp, step, rlen, ratio_idx, block_size=8, mask_order="original",
                random_ratio=0.0, original_pads=True)
    ref = ref_original_trace(step, rlen, np.full(b, RATIOS[ridx]), 8,
                             lambda a: torch.argsort(torch.tensor(a)).numpy())
    np.testing.assert_array_equal(out["p_mask"][:, prompt.shape[1]:], ref)


def test_trajectory_states_occur_in_the_trajectory():
  prompt, resp, step, rlen = make_batch(b=40, seed=3)
  b, l1 = resp.shape
  bs = 8
  for ridx in range(4):
    out = build(prompt, resp, step, rlen, np.full(b, ridx), block_size=bs, random_ratio=0.0)
    _, pm = resp_part(out, prompt.shape[1], l1)
    r = RATIOS[ridx]
    for i in range(b):
      for start in range(0, l1, bs):
        blk = [j for j in range(start, min(start + bs, l1)) if j < rlen[i]]
        if not blk:
          continue
        visible = {j for j in blk if not pm[i, j]}
        # every trajectory state of this block: revealed at or before step s
        states = [{j for j in blk if step[i, j] <= s}
                  for s in [-2] + sorted({step[i, j] for j in blk})]
        assert visible in states, (i, start, visible)
        # and the one masking the most tokens without exceeding floor(r * count)
        target = int(len(blk) * r)
        best = max(len(blk) - len(s) for s in states if len(blk) - len(s) <= target)
        assert len(blk) - len(visible) == best


def test_trajectory_without_ties_masks_exactly_the_latest():
  prompt, resp, step, rlen = make_batch(seed=4, ties=False)
  b, l1 = resp.shape
  for ridx in range(4):
    out = build(prompt, resp, step, rlen, np.full(b, ridx), block_size=8, random_ratio=0.0)
    latest = ref_original_trace(-step, rlen, np.full(b, RATIOS[ridx]), 8,
                                lambda a: np.argsort(a, kind="stable"))
    inside = np.arange(l1)[None] < rlen[:, None]
    np.testing.assert_array_equal(out["p_mask"][:, prompt.shape[1]:] & inside, latest)


def test_trajectory_and_original_are_complements_at_half():
  """Without ties, r = 0.5 on even blocks: original masks the earliest half, trajectory
  the latest half, so together they cover each full block exactly once."""
  rng = np.random.default_rng(0)
  b, l1 = 6, 16
  step = np.stack([rng.permutation(l1) + 1 for _ in range(b)])
  resp = rng.integers(2, VOCAB, size=(b, l1))
  prompt = rng.integers(2, VOCAB, size=(b, 3))
  rlen = np.full(b, l1)
  kw = dict(block_size=4, random_ratio=0.0)
  a = build(prompt, resp, step, rlen, np.full(b, 2), mask_order="original", **kw)["p_mask"]
  t = build(prompt, resp, step, rlen, np.full(b, 2), **kw)["p_mask"]
  np.testing.assert_array_equal(a[:, 3:] ^ t[:, 3:], np.ones((b, l1), bool))


# ----------------------------------------------------------------------------- pads, random

def test_default_pads_masked_and_post_num():
  prompt, resp, step, rlen = make_batch(seed=5)
  b, l1 = resp.shape
  l0 = prompt.shape[1]
  past = np.arange(l1)[None] >= rlen[:, None]
  for post_num, n_trained in [(2, 2), (0, 0), (None, l1)]:
    out = build(prompt, resp, step, rlen, np.full(b, 3), block_size=8, random_ratio=0.0,
                post_num=post_num)
    xt, pm = resp_part(out, l0, l1)
    assert (xt[past] == MASK).all()
    offs = np.arange(l1)[None] - rlen[:, None]
    np.testing.assert_array_equal(pm & past, past & (offs < n_trained))
  # original_pads in trace mode: pads never masked, post_num irrelevant
  out = build(prompt, resp, step, rlen, np.full(b, 0), random_ratio=0.0, original_pads=True)
  xt, pm = resp_part(out, l0, l1)
  assert not (pm & past).any() and (xt[past] == PAD).all()


def ref_original_random_pads(masked, resp, post_num):
  """Released post_num rule: among masked positions holding pad, keep the first post_num."""
  out = masked.copy()
  for i in range(len(resp)):
    seen = 0
    for j in range(resp.shape[1]):
      if masked[i, j] and resp[i, j] == PAD:
        seen += 1
        if seen > post_num:
          out[i, j] = False
  return out


def test_random_strategy_counts_and_original_pads():
  prompt, resp, step, rlen = make_batch(b=32, seed=6)
  b, l1 = resp.shape
  l0, bs = prompt.shape[1], 8
  ridx = np.arange(b) % 4
  ratio = np.array(RATIOS)[ridx]
  for original_pads in (False, True):
    out = build(prompt, resp, step, rlen, ridx, block_size=bs, mask_strategy="random",
                random_ratio=0.0, original_pads=original_pads, post_num=1)
    xt, pm = resp_part(out, l0, l1)
    noised = xt == MASK
    inside = np.arange(l1)[None] < rlen[:, None]
    elig = np.ones_like(inside) if original_pads else inside
    for i in range(b):
      for start in range(0, l1, bs):
        sl = slice(start, min(start + bs, l1))
        n = int(elig[i, sl].sum() * ratio[i])
        assert (noised[i, sl] & elig[i, sl]).sum() == n
    if original_pads:
      np.testing.assert_array_equal(pm, ref_original_random_pads(noised, resp, 1))
    else:
      assert (noised[~inside]).all()


def test_random_strategy_is_random_per_seed():
  prompt, resp, step, rlen = make_batch(seed=7)
  a = build(prompt, resp, step, rlen, np.full(len(resp), 2), mask_strategy="random",
            random_ratio=0.0)
  b = build(prompt, resp, step, rlen, np.full(len(resp), 2), mask_strategy="random",
            random_ratio=0.0, seeds=np.arange(len(resp)) + 100)
  assert (a["p_mask"] != b["p_mask"]).any()


@pytest.mark.parametrize("original_pads", [False, True])
def test_random_token_counts(original_pads):
  prompt, resp, step, rlen = make_batch(b=40, seed=8)
  b, l1 = resp.shape
  l0 = prompt.shape[1]
  out = build(prompt, resp, step, rlen, np.arange(b) % 4, random_ratio=0.1,
              original_pads=original_pads)
  xt, pm = resp_part(out, l0, l1)
  rand = out["random_tokens"]
  masked_set = pm if not original_pads else (xt == MASK) | rand
  n = masked_set.sum(1)
  expect = np.where(n > 0, np.minimum(np.maximum(np.floor(n * 0.1), 1), n), 0)
  np.testing.assert_array_equal(rand.sum(1), expect)
  assert (rand <= masked_set).all() and (rand <= pm).all()
  assert (xt[pm & ~rand] == MASK).all()
  assert ((xt[rand] >= 0) & (xt[rand] < VOCAB)).all()
  assert len(np.unique(xt[rand])) > 10
  # the random tokens still count as masked
  np.testing.assert_array_equal(pm | rand, pm)


# ----------------------------------------------------------------------------- ratios, seeds

def test_ratio_frequencies_follow_exponent():
  from scipy import stats
  n = 100_000
  seeds = ex.example_seeds(42, 0, np.arange(n))
  for exponent in (8.0, 2.0, 0.0):
    cfg = ex.ExampleConfig(mask_ratio_exponent=exponent)
    counts = np.bincount(ex.sample_ratio_idx(seeds, cfg), minlength=4)
    p = np.array(RATIOS) ** exponent
    p /= p.sum()
    assert stats.chisquare(counts, p * n).pvalue > 1e-3, (exponent, counts, p * n)
  cfg = ex.ExampleConfig()
  freq = np.bincount(ex.sample_ratio_idx(seeds, cfg), minlength=4) / n
  assert abs(freq[0] - 1 / (1 + 0.75**8 + 0.5**8 + 0.25**8)) < 0.004   # about 91%


def test_deterministic_and_independent_of_batch_neighbours():
  prompt, resp, step, rlen = make_batch(seed=10)
  seeds = ex.example_seeds(1, 3, np.arange(len(resp)))
  kw = dict(mask_strategy="random")
  a = build(prompt, resp, step, rlen, seeds=seeds, **kw)
  b = build(prompt, resp, step, rlen, seeds=seeds, **kw)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  # example 5 alone, with extra right padding: same noise on its response
  l1 = resp.shape[1]
  one = build(prompt[5:6], np.pad(resp[5:6], ((0, 0), (0, 7))), np.pad(step[5:6], ((0, 0), (0, 7))),
              rlen[5:6], seeds=seeds[5:6], **kw)
  xa, _ = resp_part(a, prompt.shape[1], l1)
  xo = one["ids"][:, prompt.shape[1] + l1 + 7:]
  np.testing.assert_array_equal(xo[0, :rlen[5]], xa[5, :rlen[5]])
  assert a["ratio_idx"][5] == one["ratio_idx"][0]
  assert not np.array_equal(ex.example_seeds(1, 3, [5]), ex.example_seeds(1, 4, [5]))


# ----------------------------------------------------------------------------- layout

def test_layout_labels_positions_and_mask():
  prompt, resp, step, rlen = make_batch(b=8, seed=11)
  b, l1 = resp.shape
  l0 = prompt.shape[1]
  out = build(prompt, resp, step, rlen)
  ids = out["ids"]
  assert ids.shape == (b, l0 + 2 * l1) and out["labels"].shape == (b, l0 + l1)
  np.testing.assert_array_equal(ids[:, :l0], prompt)
  np.testing.assert_array_equal(ids[:, l0:l0 + l1], resp)
  np.testing.assert_array_equal(out["labels"], ids[:, :l0 + l1])
  xt, pm = resp_part(out, l0, l1)
  np.testing.assert_array_equal(xt[~pm & (np.arange(l1) < rlen[:, None])],
                                resp[~pm & (np.arange(l1) < rlen[:, None])])
  assert not out["p_mask"][:, :l0].any()
  # positions: prompt counts non-pad tokens, response continues, noisy copy reuses
  for i in range(b):
    npad = int((prompt[i] == PAD).sum())
    expect_prompt = [1] * npad + list(range(l0 - npad))
    expect_resp = list(range(l0 - npad, l0 - npad + l1))
    np.testing.assert_array_equal(out["positions"][i], expect_prompt + expect_resp * 2)
  np.testing.assert_array_equal(out["positions"],
                                np.asarray(masks.training_positions(jnp.asarray(ids), l0, PAD)))
  layout = masks.TrainingLayout(l0, l1, 8)
  np.testing.assert_array_equal(np.asarray(layout.batch_mask(jnp.asarray(ids), PAD)),
                                np.asarray(masks.training_batch_mask(jnp.asarray(ids), l0, 8, PAD)))
  np.testing.assert_array_equal(out["step_map"], np.where(np.arange(l1) < rlen[:, None], step, -1))


def test_empty_examples_dropped_and_counted():
  prompt, resp, step, rlen = make_batch(b=6, seed=12)
  l1 = resp.shape[1]
  rlen = np.array([l1, 3, l1, 2, 5, l1])
  resp = np.where(np.arange(l1) < rlen[:, None], np.maximum(resp, 2), PAD)
  # r = 0.25 on blocks of <= 3 tokens masks nothing; post_num 0 trains no pad
  ridx = np.array([0, 3, 1, 3, 0, 2])
  out = build(prompt, resp, step, rlen, ridx, block_size=8, post_num=0)
  np.testing.assert_array_equal(out["keep"], [True, False, True, False, True, True])
  kept, dropped = ex.drop_empty(out)
  assert dropped == 2 and kept["ids"].shape[0] == 4 and kept["ratio"].shape == (4,)
  np.testing.assert_array_equal(kept["ids"], out["ids"][out["keep"]])
  # with post_num 2 the pads keep them
  out2 = build(prompt, resp, step, rlen, ridx, block_size=8, post_num=2)
  assert out2["keep"].all()


def test_inferred_response_len_and_pad_batch():
  pb = ex.pad_batch([[5, 6], [7, 8, 9]], [[10, 11, 12], [13]], [[2, 1, 3], [1]],
                    pad_id=PAD, max_gen_length=2, multiple_of=4)
  np.testing.assert_array_equal(pb["prompt_ids"], [[0, 0, 5, 6], [0, 7, 8, 9]])
  np.testing.assert_array_equal(pb["response_ids"], [[10, 11, 0, 0], [13, 0, 0, 0]])
  np.testing.assert_array_equal(pb["step_map"], [[2, 1, -1, -1], [1, -1, -1, -1]])
  np.testing.assert_array_equal(pb["response_len"], [2, 1])
  np.testing.assert_array_equal(ex.infer_response_len(pb["response_ids"], PAD), [2, 1])
  with pytest.raises(ValueError, match="row 1"):
    ex.pad_batch([[5], [6]], [[1, 2], [3]], [[1, 2], [1, 2]], pad_id=PAD)
  with pytest.raises(ValueError, match="row 0"):
    ex.pad_batch([[5]], [[1, 2]], [[1.5, 2.0]], pad_id=PAD)


def test_bad_inputs():
  prompt, resp, step, rlen = make_batch(b=4, seed=13)
  with pytest.raises(ValueError, match="step_map shape"):
    build(prompt, resp, step[:, :-1], rlen)
  with pytest.raises(ValueError, match="integers"):
    build(prompt, resp, step.astype(float), rlen)
  bad = step.copy()
  bad[2, 0] = -5
  with pytest.raises(ValueError, match=r"rows \[2\]"):
    build(prompt, resp, bad, rlen)
  with pytest.raises(ValueError, match="mask_strategy"):
    ex.ExampleConfig(mask_strategy="trajectory")
  with pytest.raises(ValueError, match="mask_order"):
    ex.ExampleConfig(mask_order="latest")
  with pytest.raises(ValueError, match="ratio_idx"):
    build(prompt, resp, step, rlen, np.full(4, 7))
  cfg = ex.ExampleConfig.from_config({"block_size": 4, "mask_ratios": [0.5], "other": 1})
  assert cfg.block_size == 4 and cfg.mask_ratios == (0.5,)


def test_training_block_size_follows_the_trajectories():
  from t3d_jax.distill.data import training_block_size
  from t3d_jax.errors import InputError
  assert training_block_size(0, 4, False, "t.jsonl") == 4      # default: the rollout's block
  assert training_block_size(4, 4, False, "t.jsonl") == 4
  assert training_block_size(8, 4, True, "t.jsonl") == 8       # on purpose
  assert training_block_size(8, None, False, "t.jsonl") == 8   # a file without meta
  with pytest.raises(InputError, match="config examples.block_size=8, but t.jsonl was "
                     "decoded at block 4: .*allow_other_block=True"):
    training_block_size(8, 4, False, "t.jsonl")
  with pytest.raises(InputError, match="t.jsonl: its block size is unknown"):
    training_block_size(0, None, False, "t.jsonl")
