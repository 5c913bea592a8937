"""The splash (block-sparse Pallas) attention path against the dense reference, on CPU in
Pallas interpret mode: training layouts (left pads, partial last block, several prompt
lengths), decode masks (block vs cache + itself, the fused [prev | block] query),
gradients, the whole model and the sampler, and the per-shard path on an 8-device mesh."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t3d_jax import masks, sharding
from t3d_jax.models import attention
from t3d_jax.models.sdar import SDARConfig, forward, init_params

PAD = 0
KV, G, D = 2, 2, 16


def _qkv(rng, b, t, s):
  f = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)  # noqa: E731
  return f(b, t, KV, G, D), f(b, s, KV, D), f(b, s, KV, D)


def _layout_case(rng, l0, l1, bs, pads):
  lay = masks.TrainingLayout(l0, l1, bs)
  ids = rng.integers(1, 50, (len(pads), lay.length))
  for r, p in enumerate(pads):
    ids[r, :p] = PAD
  return lay.attention(jnp.asarray(ids), PAD)


# (L0, L1, block, left pads per row): several prompt lengths, a partial last block
# (L1 % block != 0), a prompt not a multiple of the block, rows from unpadded to mostly
# pad, and a sequence spanning several 128-key tiles (N = 400 -> 4 x 4 tiles).
LAYOUTS = [(100, 150, 4, (0, 3, 70)), (24, 13, 4, (5, 0)), (9, 16, 8, (0, 8)),
           (0, 12, 4, (0,))]


@pytest.mark.parametrize("l0,l1,bs,pads", LAYOUTS)
def test_splash_training_mask_equals_dense(l0, l1, bs, pads):
  rng = np.random.default_rng(l0 + l1)
  m = _layout_case(rng, l0, l1, bs, pads)
  n = m.dense.shape[-1]
  q, k, v = _qkv(rng, len(pads), n, n)
  want = attention.dense(q, k, v, m.dense)
  np.testing.assert_allclose(attention.dense_layout(q, k, v, m), want, atol=1e-6)
  got = np.asarray(attention.attend(q, k, v, m, "splash"))
  real = np.asarray(m.segments) == 1  # prompt pad rows: see the module docstring
  assert np.isfinite(got).all()
  np.testing.assert_allclose(got[real], np.asarray(want)[real], atol=1e-5, rtol=1e-5)
  # the kernel's mask is the layout's pattern: it equals dense on every non-pad row
  pat = m.pattern[None] & (np.asarray(m.segments)[:, :, None] == np.asarray(m.segments)[:, None])
  np.testing.assert_array_equal(pat[real], np.asarray(m.dense)[real])


def test_splash_training_gradients_equal_dense():
  rng = np.random.default_rng(7)
  m = _layout_case(rng, 100, 150, 4, (0, 40))
  n = m.dense.shape[-1]
  q, k, v = _qkv(rng, 2, n, n)
  real = (m.segments == 1)[:, :, None, None, None]
  cot = jnp.asarray(rng.standard_normal(q.shape), jnp.float32) * real  # loss on real rows

  def loss(kind):
    return lambda q, k, v: jnp.sum(attention.attend(q, k, v, m, kind) * cot)
  want = jax.grad(loss("dense"), argnums=(0, 1, 2))(q, k, v)
  got = jax.grad(loss("splash"), argnums=(0, 1, 2))(q, k, v)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fused", [False, True])
def test_splash_decode_mask_equals_dense(fused):
  rng = np.random.default_rng(3)
  b, size = 4, 4
  t = 2 * b if fused else b
  qi = np.arange(t)
  own = (qi[None, :] < b) | (qi[:, None] >= b) if fused else np.ones((t, t), bool)
  starts = np.array([0, 5, 130, 200])   # per-row cache fill, incl. an empty cache
  valid = jnp.asarray(np.arange(200)[None, :] < starts[:, None])
  m = masks.CacheMask.of(valid, own)
  q, k, v = _qkv(rng, size, t, 200 + t)
  want = attention.dense(q, k, v, m.dense)
  got = attention.attend(q, k, v, m, "splash")
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  # and the dense CacheMask is the sampler's mask before CacheMask existed
  if not fused:
    np.testing.assert_array_equal(m.dense, masks.decode_mask(valid, b))


@pytest.mark.parametrize("fused", [False, True])
def test_dense_cached_equals_dense_on_concatenated_keys(fused):
  """The decode path scores the head-major cache and the block apart (no [cache | block]
  key tensor); it equals masked softmax over the concatenated keys, incl. an empty cache
  row and unwritten slots, forward and gradients."""
  rng = np.random.default_rng(5)
  b, size, s = 4, 3, 40
  t = 2 * b if fused else b
  qi = np.arange(t)
  own = (qi[None, :] < b) | (qi[:, None] >= b) if fused else np.ones((t, t), bool)
  valid = jnp.asarray(np.arange(s)[None, :] < np.array([0, 7, 40])[:, None])
  m = masks.CacheMask.of(valid, own)
  q, k, v = _qkv(rng, size, t, s + t)
  hm = lambda x: x[:, :s].transpose(0, 2, 1, 3)  # noqa: E731  the cache's [B, KV, S, D]
  want = attention.dense(q, k, v, m.dense)
  got = attention.attend(q, k[:, s:], v[:, s:], m, "dense", cache=(hm(k), hm(v)))
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  cot = jnp.asarray(rng.standard_normal(want.shape), jnp.float32)
  g_want = jax.grad(lambda q, k, v: jnp.sum(attention.dense(q, k, v, m.dense) * cot),
                    (0, 1, 2))(q, k, v)
  g_got = jax.grad(lambda q, k, v: jnp.sum(attention.attend(
      q, k[:, s:], v[:, s:], m, "dense", cache=(hm(k), hm(v))) * cot), (0, 1, 2))(q, k, v)
  for a, w in zip(g_got, g_want):
    np.testing.assert_allclose(a, w, atol=1e-5, rtol=1e-5)


def _tiny(attention_kind="dense"):
  return SDARConfig(vocab_size=61, hidden_size=32, intermediate_size=64, num_layers=2,
                    num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=10000.0,
                    attention=attention_kind)


def test_model_splash_forward_equals_dense():
  rng = np.random.default_rng(5)
  cfg = _tiny()
  params = init_params(cfg, jax.random.key(0))
  lay = masks.TrainingLayout(24, 52, 4)
  ids = rng.integers(1, 61, (2, lay.length))
  ids[1, :9] = PAD
  ids = jnp.asarray(ids)
  attn, pos = lay.attention(ids, PAD), lay.positions(ids, PAD)
  want = forward(params, cfg, ids, attn, pos, logits_start=lay.noisy_start)
  got = forward(params, cfg.replace(attention="splash"), ids, attn, pos,
                logits_start=lay.noisy_start)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("commit_mode", ["fused", "separate"])
def test_sampler_splash_equals_dense(commit_mode):
  from t3d_jax.sampling.config import DecodeConfig
  from t3d_jax.sampling.sampler import generate
  cfg = _tiny()
  params = init_params(cfg, jax.random.key(1))
  rng = np.random.default_rng(2)
  lens = np.array([5, 9, 3])
  prompts = np.zeros((3, 9), np.int32)
  for r, n in enumerate(lens):
    prompts[r, :n] = rng.integers(3, 61, n)  # right-padded, lengths not multiples of b
  dcfg = DecodeConfig(block_size=4, denoising_steps=2, max_new_tokens=8, mask_id=1,
                      stop_ids=(2,), pad_id=0, commit_mode=commit_mode)
  outs = [generate(params, c, jnp.asarray(prompts), jnp.asarray(lens), jax.random.key(3), dcfg)
          for c in (cfg, cfg.replace(attention="splash"))]
  np.testing.assert_array_equal(outs[0]["ids"], outs[1]["ids"])
  np.testing.assert_array_equal(outs[0]["step_map"], outs[1]["step_map"])


def test_splash_per_shard_on_mesh_equals_dense():
  """Inside a mesh context the kernel runs per shard (shard_map over data/fsdp and
  tensor); the result is the unsharded one."""
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  rng = np.random.default_rng(11)
  m = _layout_case(rng, 24, 52, 4, (0, 3, 9, 0))
  n = m.dense.shape[-1]
  q, k, v = _qkv(rng, 4, n, n)
  want = np.asarray(attention.dense(q, k, v, m.dense))
  fn = jax.jit(lambda q, k, v, m: attention.attend(q, k, v, m, "splash"))
  with sharding.in_mesh(mesh):
    hlo = fn.lower(q, k, v, m).as_text()
    got = np.asarray(fn(q, k, v, m))
  assert "manual_computation" in hlo  # the kernel ran inside a shard_map
  assert "manual_computation" not in fn.lower(q, k, v, m).as_text()  # no mesh: plain vmap
  real = np.asarray(m.segments) == 1
  np.testing.assert_allclose(got[real], want[real], atol=1e-5, rtol=1e-5)


def test_resolve_and_config_check():
  assert attention.resolve("auto", backend="cpu") == "dense"
  assert attention.resolve("auto", backend="gpu") == "dense"
  assert attention.resolve("auto", backend="tpu") == "splash"
  assert attention.resolve("splash", backend="cpu") == "splash"
  with pytest.raises(ValueError, match="unknown attention 'flash'"):
    _tiny("flash")


def test_cli_rejects_unknown_kernel_in_one_line(tmp_path):
  import os
  import subprocess
  import sys
  from pathlib import Path
  root = Path(__file__).resolve().parents[1]
  out = subprocess.run([sys.executable, "-m", "t3d_jax.main", "--config",
                        str(root / "configs" / "demo.py"), f"--config.workdir={tmp_path}",
                        "--config.model.attention=flash"], capture_output=True, text=True,
                       timeout=300, cwd=root, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 2
  assert "config.model: unknown attention 'flash'" in out.stderr
  assert "Traceback" not in out.stderr


# ----------------------------------------------------------------------------- cudnn
# jax.nn.dot_product_attention: cuDNN on a GPU; here (no GPU) XLA's implementation of the
# same call, which checks what t3d_jax hands it (head grouping, the mask as [B, 1, T, S]).

@pytest.mark.parametrize("l0,l1,bs,pads", LAYOUTS[:2])
def test_cudnn_call_training_mask_equals_dense(l0, l1, bs, pads):
  rng = np.random.default_rng(l0 + l1 + 1)
  m = _layout_case(rng, l0, l1, bs, pads)
  n = m.dense.shape[-1]
  q, k, v = _qkv(rng, len(pads), n, n)
  want = attention.dense(q, k, v, m.dense)
  np.testing.assert_allclose(attention.attend(q, k, v, m, "cudnn"), want, atol=1e-5, rtol=1e-5)
  cot = jnp.asarray(rng.standard_normal(q.shape), jnp.float32)
  grads = [jax.grad(lambda q, k, v: jnp.sum(attention.attend(q, k, v, m, kind) * cot),
                    argnums=(0, 1, 2))(q, k, v) for kind in ("dense", "cudnn")]
  for g, w in zip(grads[1], grads[0]):
    np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5)


def test_cudnn_call_decode_mask_equals_dense():
  rng = np.random.default_rng(4)
  qi = np.arange(8)
  m = masks.CacheMask.of(jnp.asarray(np.arange(40)[None, :] < np.array([[0], [9], [40]])),
                         (qi[None, :] < 4) | (qi[:, None] >= 4))  # the fused [prev | block]
  q, k, v = _qkv(rng, 3, 8, 48)
  np.testing.assert_allclose(attention.attend(q, k, v, m, "cudnn"),
                             attention.dense(q, k, v, m.dense), atol=1e-5, rtol=1e-5)


def test_cudnn_model_and_sampler_bf16():
  """The whole model in bf16 with attention='cudnn' (the XLA call here) against dense bf16,
  and greedy decoding token for token."""
  from t3d_jax.sampling.config import DecodeConfig
  from t3d_jax.sampling.sampler import generate
  cfg = _tiny().replace(dtype="bfloat16")
  params = init_params(cfg, jax.random.key(0))
  lay = masks.TrainingLayout(24, 52, 4)
  ids = jnp.asarray(np.random.default_rng(6).integers(1, 61, (2, lay.length)))
  attn, pos = lay.attention(ids, PAD), lay.positions(ids, PAD)
  want = forward(params, cfg, ids, attn, pos)
  got = forward(params, cfg.replace(attention="cudnn"), ids, attn, pos)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                             atol=0.05)
  prompts = jnp.asarray(np.random.default_rng(2).integers(3, 61, (2, 8)))
  dcfg = DecodeConfig(block_size=4, denoising_steps=2, max_new_tokens=8, mask_id=1)
  outs = [generate(params, c, prompts, jnp.array([8, 5]), jax.random.key(3), dcfg)
          for c in (cfg, cfg.replace(attention="cudnn"))]
  np.testing.assert_array_equal(outs[0]["ids"], outs[1]["ids"])


def test_cudnn_conditions_named():
  assert attention.cudnn_unsupported(jnp.bfloat16, 128, 8, 64) is None
  assert "dtype float32" in attention.cudnn_unsupported(jnp.float32, 128, 8, 64)
  assert "head_dim 160" in attention.cudnn_unsupported(jnp.bfloat16, 160, 8, 64)
  assert "9 queries x 64 keys" in attention.cudnn_unsupported(jnp.float16, 64, 9, 64)
  q = jnp.zeros((1, 9, 2, 2, 16), jnp.bfloat16)
  kv = jnp.zeros((1, 9, 2, 16), jnp.bfloat16)
  with pytest.raises(ValueError, match="attention 'cudnn' cannot take 9 queries x 9 keys"):
    attention.cudnn(q, kv, kv, jnp.ones((1, 9, 9), bool), implementation="cudnn")
  with pytest.raises(ValueError, match="attention 'cudnn' needs dtype bfloat16 or float16"):
    _tiny("cudnn")
  assert attention.resolve("auto", backend="gpu") == "dense"  # not picked until run on a GPU


@pytest.mark.parametrize("cache", ["none", "dual"])
def test_canvas_sampler_splash_equals_dense(cache):
  """The bidirectional sampler (LLaDA / Dream): the kernel with the all-ones pattern and
  the left pads (and, dual cache, the recomputed block's kept keys) as segments decodes
  as dense does."""
  from t3d_jax.models.dream import DreamConfig
  from t3d_jax.sampling.config import DecodeConfig
  from t3d_jax.sampling.sampler import generate
  cfg = DreamConfig(64, 32, 64, 2, 4, 2, 8, attention_bias=True)
  params = init_params(cfg, jax.random.key(1))
  lens = np.array([5, 2])
  prompts = np.zeros((2, 6), np.int32)
  prompts[0, :5], prompts[1, :2] = [3, 9, 4, 11, 7], [5, 6]
  dcfg = DecodeConfig(block_size=4, denoising_steps=2, max_new_tokens=8, mask_id=1,
                      pad_id=0, cache=cache)
  outs = [generate(params, c, jnp.asarray(prompts), jnp.asarray(lens), jax.random.key(3), dcfg)
          for c in (cfg, cfg.replace(attention="splash"))]
  np.testing.assert_array_equal(outs[0]["ids"], outs[1]["ids"])
  np.testing.assert_array_equal(outs[0]["step_map"], outs[1]["step_map"])
