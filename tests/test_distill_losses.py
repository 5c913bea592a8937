"""T3D losses against an independent numpy implementation written from docs/method.md §3."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t3d_jax.distill import losses

PAD, MASK = 0, 1
L0, L1, V, BS, K = 3, 11, 9, 4, 2      # L1 = 11: blocks of 4, 4 and a partial 3


# ----------------------------------------------------------------------------- references

def np_log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def np_mean_logp(logits, targets, p_mask):
  """sum over p_mask of log softmax(logits)[y] / |p_mask|, one example at a time."""
  out = []
  for lg, y, m in zip(logits, targets, p_mask):
    lp = np_log_softmax(lg)
    picked = [lp[i, y[i]] for i in range(len(y)) if m[i]]
    out.append(sum(picked) / len(picked) if picked else 0.0)
  return np.array(out)


def np_logsigmoid(x):
  return -np.log1p(np.exp(-x))


def np_ddo(tr, tf, rr, rf, alpha, beta):
  loss_real = -np_logsigmoid(beta * (tr - rr))
  sig = 1 / (1 + np.exp(-beta * (tf - rf)))
  loss_fake = -alpha * np.log(1 - sig)
  return loss_real.mean() + loss_fake.mean(), loss_real, loss_fake


def np_path_loss_one(logits, x0, step_map, block_size, k, start_pos):
  """One example, written from the doc: per block, order tokens by step_map; level s
  keeps the first (s+1)*k revealed plus step_map -1 positions (a block without any
  revealed entry keeps nothing), minus x0 pads; mean CE per level; average the levels
  that have any position."""
  resp_logits = np.asarray(logits)[start_pos:]
  x0r = np.asarray(x0)[start_pos:]
  n = len(x0r)
  sm = list(step_map[:n]) + [-1] * max(0, n - len(step_map))
  lp = np_log_softmax(resp_logits)
  level_losses = []
  for s in range(math.ceil(block_size / k)):
    chosen = []
    for start in range(0, n, block_size):
      block = list(range(start, min(start + block_size, n)))
      revealed = [i for i in block if sm[i] >= 0]
      if not revealed:
        continue
      revealed.sort(key=lambda i: (sm[i], i))
      chosen += revealed[: (s + 1) * k] + [i for i in block if sm[i] == -1]
    chosen = [i for i in chosen if x0r[i] != PAD]
    if chosen:
      level_losses.append(np.mean([-lp[i, x0r[i]] for i in chosen]))
  return float(np.mean(level_losses)) if level_losses else 0.0


# ----------------------------------------------------------------------------- fixtures

def fixed_case():
  rng = np.random.default_rng(1234)
  b = 5
  logits = rng.normal(size=(b, L0 + L1, V)).astype(np.float32) * 2.0
  prompt = np.array([[PAD, 5, 6], [4, 5, 6], [PAD, PAD, 7], [3, 2, 8], [PAD, 4, 4]])
  resp = rng.integers(2, V, size=(b, L1))
  resp[0, 9:] = PAD                       # trailing pads (partial last block)
  resp[2, 6:] = PAD                       # pads from inside block 1
  resp[3, 4] = PAD                        # a pad-valued token inside the response
  x0 = np.concatenate([prompt, resp], 1)
  step_map = np.array([
      [3, 1, 2, 4, 7, 5, 8, 6, 9, 10, 11],       # no ties
      [2, 2, 1, 1, -1, 5, 5, 5, 6, 6, 6],        # ties, a -1
      [-1, -1, -1, -1, 4, 3, -1, -1, -1, -1, -1],  # a block with only -1
      [1, 1, 1, 1, 2, 3, 3, 2, 4, -1, 4],        # ties, -1 in the partial block
      [0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7],         # step 0 entries (committed masks)
  ])
  p_mask = np.zeros((b, L0 + L1), bool)
  p_mask[0, L0:] = True                          # all masked (pads included)
  p_mask[1, L0 + 2: L0 + 7] = True               # partially masked
  p_mask[2, L0] = True                           # one position
  p_mask[3, L0::3] = True
  p_mask[4, L0 + 4:] = True
  return logits, x0, step_map, p_mask


# ----------------------------------------------------------------------------- tests

def test_masked_mean_logp_matches_numpy():
  logits, x0, _, p_mask = fixed_case()
  got = losses.masked_mean_logp(jnp.asarray(logits), jnp.asarray(x0), jnp.asarray(p_mask))
  np.testing.assert_allclose(np.asarray(got), np_mean_logp(logits, x0, p_mask), atol=1e-5)


def test_bf16_logits_use_fp32_log_softmax():
  logits, x0, _, p_mask = fixed_case()
  lg16 = jnp.asarray(logits * 7.3, jnp.bfloat16)
  got = losses.masked_mean_logp(lg16, jnp.asarray(x0), jnp.asarray(p_mask))
  assert got.dtype == jnp.float32
  ref = np_mean_logp(np.asarray(lg16.astype(jnp.float32)), x0, p_mask)
  np.testing.assert_allclose(np.asarray(got), ref, atol=1e-5)


def test_empty_p_mask_gives_zero_not_nan():
  logits, x0, _, p_mask = fixed_case()
  p_mask[2] = False
  got = np.asarray(losses.masked_mean_logp(jnp.asarray(logits), jnp.asarray(x0),
                                           jnp.asarray(p_mask)))
  assert np.isfinite(got).all() and got[2] == 0.0


def test_ddo_loss_matches_numpy_and_names():
  rng = np.random.default_rng(0)
  tr, tf, rr, rf = (rng.normal(size=6).astype(np.float32) * 3 - 2 for _ in range(4))
  alpha, beta = 0.5, 0.1
  loss, metrics = losses.ddo_loss(*(jnp.asarray(x) for x in (tr, tf, rr, rf)), alpha, beta)
  ref, lr, lf = np_ddo(tr, tf, rr, rf, alpha, beta)
  np.testing.assert_allclose(float(loss), ref, atol=1e-5)
  np.testing.assert_allclose(float(metrics["loss_real"]), lr.mean(), atol=1e-5)
  np.testing.assert_allclose(float(metrics["loss_fake"]), lf.mean(), atol=1e-5)
  for name, val in [("logp_target_real", tr), ("logp_target_fake", tf),
                    ("logp_ref_real", rr), ("logp_ref_fake", rf)]:
    np.testing.assert_allclose(float(metrics[name]), val.mean(), atol=1e-5)
  # other alpha / beta
  loss2, _ = losses.ddo_loss(*(jnp.asarray(x) for x in (tr, tf, rr, rf)), 0.9, 2.0)
  np.testing.assert_allclose(float(loss2), np_ddo(tr, tf, rr, rf, 0.9, 2.0)[0], atol=1e-5)


def test_ddo_weight_is_mean_over_kept_examples():
  rng = np.random.default_rng(3)
  xs = [rng.normal(size=5).astype(np.float32) for _ in range(4)]
  w = np.array([1, 0, 1, 1, 0], np.float32)
  loss, _ = losses.ddo_loss(*(jnp.asarray(x) for x in xs), 0.5, 0.1, weight=jnp.asarray(w))
  keep = w > 0
  ref = np_ddo(*(x[keep] for x in xs), 0.5, 0.1)[0]
  np.testing.assert_allclose(float(loss), ref, atol=1e-5)


@pytest.mark.parametrize("block_size,k", [(BS, K), (BS, 3), (8, 4), (3, 1)])
def test_path_loss_matches_numpy(block_size, k):
  logits, x0, step_map, _ = fixed_case()
  got = losses.path_loss(jnp.asarray(logits), jnp.asarray(x0), jnp.asarray(step_map),
                         block_size, k, MASK, PAD, L0)
  ref = [np_path_loss_one(logits[b], x0[b], step_map[b], block_size, k, L0)
         for b in range(len(x0))]
  np.testing.assert_allclose(np.asarray(got), ref, atol=1e-5)
  assert len(set(np.round(ref, 4))) == len(ref)      # the cases really differ


def test_path_loss_step_map_shorter_and_longer_than_response():
  logits, x0, step_map, _ = fixed_case()
  for sm in (step_map[:, :7], np.concatenate([step_map, np.full((5, 4), 3)], 1)):
    got = losses.path_loss(jnp.asarray(logits), jnp.asarray(x0), jnp.asarray(sm),
                           BS, K, MASK, PAD, L0)
    ref = [np_path_loss_one(logits[b], x0[b], sm[b], BS, K, L0) for b in range(5)]
    np.testing.assert_allclose(np.asarray(got), ref, atol=1e-5)


def test_path_loss_jits_and_no_position_gives_zero():
  logits, x0, step_map, _ = fixed_case()
  f = jax.jit(losses.path_loss, static_argnums=(3, 4, 5, 6, 7))
  eager = losses.path_loss(jnp.asarray(logits), jnp.asarray(x0), jnp.asarray(step_map),
                           BS, K, MASK, PAD, L0)
  np.testing.assert_allclose(np.asarray(f(logits, x0, step_map, BS, K, MASK, PAD, L0)),
                             np.asarray(eager), atol=1e-6)
  x0_pad = x0.copy()
  x0_pad[:, L0:] = PAD
  zero = f(logits, x0_pad, step_map, BS, K, MASK, PAD, L0)
  np.testing.assert_array_equal(np.asarray(zero), 0.0)


@pytest.mark.parametrize("vocab", [50, 128, 300, 1024])  # < one chunk, one, partial, several
def test_argmax_last_is_jnp_argmax_with_ties_and_nan(vocab):
  rng = np.random.default_rng(vocab)
  x = rng.integers(-3, 3, (64, vocab)).astype(np.float32)  # many ties: first index wins
  x[1, 3] = x[1, 7] = np.nan                                # a NaN counts as the max
  x[3, vocab - 1] = np.nan                                  # ... in the last chunk too
  x[4, vocab - 1] = 9.0                                     # a max in the (partial) last chunk
  x[2, :] = -np.inf
  x[5, :] = 2.0                                             # one tie across every chunk
  for dt in (jnp.float32, jnp.bfloat16):
    got = jax.jit(losses.argmax_last)(jnp.asarray(x, dt))
    np.testing.assert_array_equal(np.asarray(got), np.argmax(x, -1))  # numpy's argmax
    np.testing.assert_array_equal(np.asarray(got), np.asarray(jnp.argmax(jnp.asarray(x, dt), -1)))
    assert got.dtype == jnp.int32
  y = rng.standard_normal((2, 3, vocab)).astype(np.float32)  # leading axes kept
  np.testing.assert_array_equal(np.asarray(losses.argmax_last(jnp.asarray(y))), y.argmax(-1))


def test_fake_targets_argmax_and_gumbel_frequencies():
  logits = jnp.asarray(np.log(np.array([[[0.1, 0.2, 0.3, 0.4]]], np.float32)))
  assert int(losses.fake_targets(logits)[0, 0]) == 3
  many = jnp.broadcast_to(logits, (1, 20000, 4))
  for temp in (1.0, 0.5):
    draws = np.asarray(losses.fake_targets(many, temp, jax.random.PRNGKey(7)))[0]
    freq = np.bincount(draws, minlength=4) / draws.size
    p = np.array([0.1, 0.2, 0.3, 0.4]) ** (1 / temp)
    np.testing.assert_allclose(freq, p / p.sum(), atol=0.015)
  with pytest.raises(ValueError, match="rng"):
    losses.fake_targets(logits, 1.0)


def t3d_reference(tl, rl, x0, p_mask, step_map, cfg, fake):
  tr, rr = np_mean_logp(tl, x0, p_mask), np_mean_logp(rl, x0, p_mask)
  tf, rf = np_mean_logp(tl, fake, p_mask), np_mean_logp(rl, fake, p_mask)
  ddo = np_ddo(tr, tf, rr, rf, cfg.alpha, cfg.beta)[0]
  path = np.mean([np_path_loss_one(tl[b], x0[b], step_map[b], cfg.block_size,
                                   cfg.path_k_steps, L0) for b in range(len(x0))])
  return ddo, path, dict(logp_target_real=tr.mean(), logp_ref_real=rr.mean(),
                         logp_target_fake=tf.mean(), logp_ref_fake=rf.mean())


@pytest.mark.parametrize("temp", [0.0, 0.8])
def test_t3d_loss_total_and_metrics(temp):
  logits, x0, step_map, p_mask = fixed_case()
  ref_logits = logits + np.random.default_rng(5).normal(size=logits.shape).astype(np.float32)
  cfg = losses.LossConfig(block_size=BS, path_k_steps=K, lambda_path=0.2,
                          reference_temp=temp)
  key = jax.random.PRNGKey(11)
  total, m = losses.t3d_loss(jnp.asarray(logits), jnp.asarray(ref_logits), jnp.asarray(x0),
                             jnp.asarray(p_mask), jnp.asarray(step_map), cfg, prompt_len=L0,
                             mask_id=MASK, pad_id=PAD, rng=key)
  fake = (ref_logits.argmax(-1) if temp == 0 else
          np.asarray(losses.fake_targets(jnp.asarray(ref_logits), temp, key)))
  if temp == 0:
    assert (fake != x0).any()
  ddo, path, logps = t3d_reference(logits, ref_logits, x0, p_mask, step_map, cfg, fake)
  np.testing.assert_allclose(float(m["loss"]), ddo, atol=1e-5)
  np.testing.assert_allclose(float(m["loss_path"]), path, atol=1e-5)
  np.testing.assert_allclose(float(total), ddo + 0.2 * path, atol=1e-5)
  np.testing.assert_allclose(float(m["loss_total"]), float(total), atol=1e-7)
  for name, val in logps.items():
    np.testing.assert_allclose(float(m[name]), val, atol=1e-5)
  assert {"loss", "loss_real", "loss_fake", "logp_target_real", "logp_ref_real",
          "logp_target_fake", "logp_ref_fake", "loss_path"} <= set(m)


@pytest.mark.parametrize("temp", [0.0, 0.8])
def test_t3d_loss_on_noisy_rows_only_equals_full_rows(temp):
  """logits_start = prompt_len (the step's head-skipping): same loss, metrics and
  gradient as with the prompt rows' logits present, the Gumbel draw included."""
  logits, x0, step_map, p_mask = fixed_case()
  ref_logits = logits[::-1] * 0.7
  cfg = losses.LossConfig(block_size=BS, path_k_steps=K, reference_temp=temp)
  key = jax.random.PRNGKey(3)

  def f(tl, rl, start):
    return losses.t3d_loss(tl[:, start:], rl[:, start:], x0, p_mask, step_map, cfg,
                           prompt_len=L0, mask_id=MASK, pad_id=PAD, rng=key,
                           logits_start=start)

  full, m_full = f(jnp.asarray(logits), jnp.asarray(ref_logits), 0)
  part, m_part = f(jnp.asarray(logits), jnp.asarray(ref_logits), L0)
  np.testing.assert_allclose(float(part), float(full), rtol=1e-6)
  for k in m_full:
    np.testing.assert_allclose(float(m_part[k]), float(m_full[k]), rtol=1e-6, atol=1e-7)
  g_full = jax.grad(lambda t: f(t, jnp.asarray(ref_logits), 0)[0])(jnp.asarray(logits))
  g_part = jax.grad(lambda t: f(t, jnp.asarray(ref_logits), L0)[0])(jnp.asarray(logits))
  np.testing.assert_allclose(np.asarray(g_part), np.asarray(g_full), atol=1e-7)
  with pytest.raises(ValueError, match="logits_start"):
    f(jnp.asarray(logits), jnp.asarray(ref_logits), L0 + 1)


def test_t3d_loss_gradient_only_through_target_and_jits():
  logits, x0, step_map, p_mask = fixed_case()
  cfg = losses.LossConfig(block_size=BS, path_k_steps=K)

  def f(tl, rl):
    return losses.t3d_loss(tl, rl, x0, p_mask, step_map, cfg, prompt_len=L0, mask_id=MASK,
                           pad_id=PAD)[0]

  gt, gr = jax.jit(jax.grad(f, argnums=(0, 1)))(jnp.asarray(logits), jnp.asarray(logits) * 0.5)
  assert float(jnp.abs(gr).max()) == 0.0
  assert float(jnp.abs(gt).max()) > 0.0


def test_t3d_loss_weight_excludes_examples():
  logits, x0, step_map, p_mask = fixed_case()
  cfg = losses.LossConfig(block_size=BS, path_k_steps=K)
  keep = np.array([1, 1, 0, 1, 0], bool)
  args = lambda a: [jnp.asarray(x[a]) for x in (logits, logits[::-1] * 0.3, x0, p_mask,
                                                 step_map)]
  tot_w, _ = losses.t3d_loss(*args(slice(None)), cfg, prompt_len=L0, mask_id=MASK,
                             pad_id=PAD, weight=jnp.asarray(keep))
  tot_k, _ = losses.t3d_loss(*args(keep), cfg, prompt_len=L0, mask_id=MASK, pad_id=PAD)
  np.testing.assert_allclose(float(tot_w), float(tot_k), atol=1e-6)


def test_loss_config_from_mapping():
  cfg = losses.LossConfig.from_config({"alpha": 0.3, "path_k_steps": 2, "unrelated": 1})
  assert (cfg.alpha, cfg.beta, cfg.path_k_steps) == (0.3, 0.1, 2)
  with pytest.raises(ValueError, match="path_k_steps"):
    losses.LossConfig(path_k_steps=0)


def test_loss_rows_drop_the_clean_rows():
  x = jnp.arange(2 * (3 + 2 * 4) * 2).reshape(2, 11, 2)
  rows = np.asarray(losses.loss_rows(x, 3))
  np.testing.assert_array_equal(rows, np.concatenate([np.asarray(x)[:, :3], np.asarray(x)[:, 7:]], 1))
  with pytest.raises(ValueError, match="prompt_len"):
    losses.loss_rows(x, 4)
