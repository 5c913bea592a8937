"""Flax SDAR vs transformers' Qwen3 (PyTorch), and the KV-cache path vs the full forward."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hf_models import make_qwen3, torch_logits
from t3d_jax import masks
from t3d_jax.convert import load_params
from t3d_jax.models import KVCache, forward, forward_with_cache, logical_axes, write_cache
from t3d_jax.models.sdar import RopeTable, rope_tables, unstack_layers

VOCAB = 300


@pytest.fixture(scope="module", params=[
    dict(tied=False, bias=False), dict(tied=True, bias=False), dict(tied=False, bias=True)],
    ids=["untied", "tied", "bias"])
def tiny(request, tmp_path_factory):
  d = tmp_path_factory.mktemp("hf")
  model = make_qwen3(d, theta=12345.0, **request.param)
  params, cfg = load_params(d)
  return model, params, cfg


def test_plain_causal_matches_transformers(tiny):
  model, params, cfg = tiny
  assert cfg.rope_theta == 12345.0
  B, T = 2, 12
  ids = np.random.RandomState(0).randint(0, VOCAB, (B, T))
  pos = np.tile(np.arange(T), (B, 1))
  mask = np.broadcast_to(np.asarray(masks.causal_mask(T)), (B, T, T))
  ours = np.asarray(forward(params, cfg, ids, mask, pos))
  np.testing.assert_allclose(ours, torch_logits(model, ids, mask, pos), atol=1e-4, rtol=0)


def test_t3d_training_mask_matches_transformers(tiny):
  model, params, cfg = tiny
  L0, L1, b, pad = 7, 6, 4, 0
  rng = np.random.RandomState(1)
  ids = rng.randint(1, VOCAB, (3, L0 + 2 * L1))
  ids[0, :3] = pad        # left-padded prompts of different lengths
  ids[1, :L0 - 1] = pad
  ids[2, L0 + L1:L0 + L1 + 3] = 299  # some "mask" tokens in xt
  mask = np.asarray(masks.training_batch_mask(ids, L0, b, pad))
  pos = np.asarray(masks.training_positions(ids, L0, pad))
  ours = np.asarray(forward(params, cfg, ids, mask, pos))
  ref = torch_logits(model, ids, mask, pos)
  np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
  noisy = np.asarray(forward(params, cfg, ids, mask, pos, logits_start=L0 + L1))
  np.testing.assert_allclose(noisy, ours[:, L0 + L1:], atol=1e-5, rtol=0)
  # the layout's mask with its fast-path hints (L1 = 6: a partial last block of 4-row blocks)
  layout = masks.TrainingLayout(L0, L1, b)
  attn = layout.attention(jnp.asarray(ids), pad)
  np.testing.assert_array_equal(np.asarray(attn.dense), mask)
  laid = np.asarray(forward(params, cfg, ids, attn, pos))
  np.testing.assert_allclose(laid, ours, atol=1e-5, rtol=0)
  with pytest.raises(ValueError, match="LayoutMask needs no cache and 13 rows"):
    forward(params, cfg, ids[:, :L0 + L1], attn, pos[:, :L0 + L1])


@pytest.mark.parametrize("unstacked,table", [(False, False), (True, False), (True, True)])
def test_cache_decode_equals_full_forward(tiny, unstacked, table):
  """Prefill a prefix into the cache block by block, then decode a block against it;
  also with the layers unstacked (the sampler's decode layout, run unrolled) and with
  the RoPE read from a table made once (as the sampler does)."""
  _, params, cfg = tiny
  if unstacked:
    params = unstack_layers(params)
    assert "layers" not in params and len([k for k in params if k.startswith("layer_")]) == \
        cfg.num_layers
    assert unstack_layers(params) is params
  B, b, nblk = 2, 4, 3
  T = b * nblk
  ids = np.random.RandomState(2).randint(0, VOCAB, (B, T))
  pos = np.tile(np.arange(T), (B, 1))
  full = np.asarray(forward(params, cfg, ids, np.broadcast_to(
      np.asarray(masks.staircase_mask(T, b)), (B, T, T)), pos))
  cache = KVCache.zeros(cfg, B, T)
  valid = np.zeros((B, T), bool)
  rope = RopeTable.of(cfg, T) if table else None
  if table:  # the table's rows are the per-forward tables of those positions
    for got, want in zip(rope.at(pos), rope_tables(pos, cfg.head_dim, cfg.rope_theta)):
      np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  for k in range(nblk):
    sl = slice(k * b, (k + 1) * b)
    m = masks.decode_mask(jnp.asarray(valid), b)
    logits, new = forward_with_cache(params, cfg, ids[:, sl], m, pos[:, sl], cache,
                                     rope_table=rope)
    np.testing.assert_allclose(np.asarray(logits), full[:, sl], atol=1e-5, rtol=0)
    cache = write_cache(cache, new, jnp.full((B,), k * b))
    valid[:, sl] = True


def test_bf16_and_remat_run(tiny):
  _, params, cfg = tiny
  ids = np.arange(8)[None] % VOCAB
  mask = np.ones((1, 8, 8), bool)
  pos = np.arange(8)[None]
  ref = forward(params, cfg, ids, mask, pos)
  bf = forward(jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), params),
               cfg.replace(dtype="bfloat16", param_dtype="bfloat16"), ids, mask, pos)
  assert bf.dtype == jnp.bfloat16
  assert np.abs(np.asarray(bf, np.float32) - np.asarray(ref)).max() < 0.1

  def loss(p, c):
    return forward(p, c, ids, mask, pos).sum()
  g1 = jax.grad(loss)(params, cfg.replace(remat="none"))
  for remat in ("dots", "full", True):
    g2 = jax.grad(loss)(params, cfg.replace(remat=remat))
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-4)
  assert cfg.replace(remat=True).remat == "full" and cfg.replace(remat=False).remat == "none"
  with pytest.raises(ValueError, match="unknown remat 'some'"):
    cfg.replace(remat="some")


def test_logical_axes_named(tiny):
  _, params, cfg = tiny
  axes = logical_axes(cfg)
  assert tuple(axes["embedding"]) == ("vocab", "embed")
  assert tuple(axes["layers"]["attn"]["q_kernel"]) == ("layers", "embed", "heads", "head_dim")
  assert tuple(axes["layers"]["attn"]["k_kernel"]) == ("layers", "embed", "kv_heads", "head_dim")
  assert tuple(axes["layers"]["mlp"]["down_kernel"]) == ("layers", "mlp", "embed")
  assert jax.tree.structure(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)) \
      == jax.tree.structure(jax.tree.map(lambda x: 0, params))


def test_write_cache_rows_and_offsets():
  """Per-row offsets, a count below the block, and rows left out keep their slots, in
  every layer's buffer."""
  rng = np.random.RandomState(0)
  stacked = lambda t: KVCache.of_stacked(*(jnp.asarray(rng.randn(2, 3, 1, t, 4), jnp.float32)
                                           for _ in range(2)))
  cache, new = stacked(10), stacked(4)
  start, rows = np.array([0, 5, 7]), np.array([True, False, True])
  got = write_cache(cache, new, jnp.asarray(start), count=3, rows=jnp.asarray(rows))
  for g, c, n in zip(got, cache, new):      # k, then v
    assert len(g) == 2                       # layers
    want = np.array(c)
    for r in range(3):
      if rows[r]:
        want[:, r, :, start[r]:start[r] + 3] = np.asarray(n)[:, r, :, :3]
    np.testing.assert_array_equal(np.stack(g), want)
  assert cache.length == 10 and new.first(2).length == 2
