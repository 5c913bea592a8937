"""LLaDA and Dream train on what they decode: the training view of an example
(t3d_jax/train/views.py) equals, token for token, the input the bidirectional sampler
ran at the same trajectory state (ids, key validity, positions, and which output row
scores which token), captured from the real sampler while it decodes."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t3d_jax.distill.examples import ExampleConfig, build_examples
from t3d_jax.models import family as families
from t3d_jax.models import init_params, sdar
from t3d_jax.sampling import DecodeConfig, make_generate
from t3d_jax.train import views
from t3d_jax.train.examples import pad_batch

V, PAD, MASK, BLOCK, CANVAS = 48, 0, 47, 4, 12
SIZES = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
             num_kv_heads=2, head_dim=8)


def decode_and_capture(model, params, prompts, monkeypatch):
  """Greedy full-step decode (one token per forward, no cache, no stop id: every block
  decoded); returns the outputs and, per forward, (x, key validity, positions, rows)."""
  seen = []
  real = sdar.forward_with_cache

  def recording(params, cfg, ids, mask, positions, cache, **kw):
    seen.append((np.asarray(ids), np.asarray(mask.valid), np.asarray(positions),
                 np.asarray(kw["logits_rows"])))
    return real(params, cfg, ids, mask, positions, cache, **kw)

  monkeypatch.setattr(sdar, "forward_with_cache", recording)
  dcfg = DecodeConfig(block_size=BLOCK, denoising_steps=BLOCK, max_new_tokens=CANVAS,
                      mask_id=MASK, stop_ids=(), pad_id=PAD, temperature=0.0)
  w = max(map(len, prompts))
  ids = np.zeros((len(prompts), w), np.int32)
  for r, p in enumerate(prompts):
    ids[r, :len(p)] = p
  with jax.disable_jit():  # concrete arrays at every forward
    out = make_generate(model, dcfg)(params, ids, np.array(list(map(len, prompts))),
                                     jax.random.key(0))
  return {k: np.asarray(v) for k, v in out.items()}, seen


@pytest.mark.parametrize("name", ["llada", "dream"])
def test_training_view_is_the_decoders_input(name, monkeypatch):
  model = families.get(name).config_class(**SIZES)
  params = init_params(model, jax.random.key(1))
  rng = np.random.RandomState(0)
  prompts = [rng.randint(1, MASK, n).tolist() for n in (5, 2, 7)]
  out, seen = decode_and_capture(model, params, prompts, monkeypatch)
  assert len(seen) == CANVAS  # one token per forward, every block
  # the trajectory, as the rollout stores it, through the distill example builder: with
  # one token per forward, mask ratio (4 - t) / 4 is the state before step t of each block
  padded = pad_batch(prompts, out["ids"].tolist(), out["step_map"].tolist(), pad_id=PAD,
                     response_width=CANVAS)
  assert padded["prompt_ids"].shape[1] == 7 and padded["response_ids"].shape[1] == CANVAS
  cfg = ExampleConfig(block_size=BLOCK, mask_strategy="trace", random_ratio=0.0)
  off = families.get(name).prediction_offset
  checked = 0
  for f, (x, valid, pos, rows) in enumerate(seen):
    k, t = divmod(f, BLOCK)                     # block k, its step t (0-based)
    ex = build_examples(padded["prompt_ids"], padded["response_ids"], padded["step_map"],
                        np.arange(3), cfg, pad_id=PAD, mask_id=MASK,
                        response_len=np.full(3, CANVAS), ratio_idx=np.full(3, t))
    v = views.bidirectional_rows(jnp.asarray(ex["ids"]), jnp.asarray(ex["positions"]),
                                 prompt_len=7, block_size=BLOCK, mask_id=MASK, pad_id=PAD,
                                 offset=off)
    v = {key: np.asarray(a[:, k]) for key, a in v.items()}  # block k of every example
    np.testing.assert_array_equal(v["valid"], valid)
    np.testing.assert_array_equal(np.where(valid, v["ids"], -1), np.where(valid, x, -1))
    np.testing.assert_array_equal(np.where(valid, v["positions"], -1),
                                  np.where(valid, pos, -1))
    np.testing.assert_array_equal(v["rows"], rows)
    # which position predicts which token: block k's tokens from rows 7 + 4k + j - offset
    np.testing.assert_array_equal(rows[0], 7 + BLOCK * k + np.arange(BLOCK) - off)
    assert (x[:, 7 + BLOCK * (k + 1):] == MASK).all()  # later blocks: all masks
    checked += 1
  assert checked == CANVAS


@pytest.mark.parametrize("name", ["llada", "dream"])
def test_response_logits_gather_each_blocks_row(name):
  """response_logits [B, L1, V] holds, for block i, the logits the view's row i scores it
  with (the jitted training path against the rows forwarded one by one)."""
  model = families.get(name).config_class(**SIZES)
  params = init_params(model, jax.random.key(2))
  rng = np.random.RandomState(3)
  prompts = [rng.randint(1, MASK, n).tolist() for n in (3, 6)]
  resp = [rng.randint(1, MASK, CANVAS).tolist() for _ in prompts]
  smap = [list(range(1, CANVAS + 1)) for _ in prompts]
  padded = pad_batch(prompts, resp, smap, pad_id=PAD, multiple_of=BLOCK)
  ex = build_examples(padded["prompt_ids"], padded["response_ids"], padded["step_map"],
                      np.arange(2), ExampleConfig(block_size=BLOCK, mask_strategy="random"),
                      pad_id=PAD, mask_id=MASK, vocab_size=V)
  mb = {k: jnp.asarray(ex[k]) for k in ("ids", "positions", "labels")}
  got = np.asarray(jax.jit(lambda p, mb: views.response_logits(
      p, model, mb, block_size=BLOCK, pad_id=PAD, mask_id=MASK))(params, mb))
  l0 = padded["prompt_ids"].shape[1]
  v = views.bidirectional_rows(mb["ids"], mb["positions"], prompt_len=l0, block_size=BLOCK,
                               mask_id=MASK, pad_id=PAD,
                               offset=families.get(name).prediction_offset)
  for i in range(CANVAS // BLOCK):
    for b in range(2):
      valid = v["valid"][b, i]
      logits = sdar.forward(params, model, v["ids"][b, i][None],
                            jnp.broadcast_to(valid[None, None], (1, len(valid), len(valid))),
                            v["positions"][b, i][None])[0]
      want = np.asarray(logits)[np.asarray(v["rows"][b, i])]
      np.testing.assert_allclose(got[b, i * BLOCK:(i + 1) * BLOCK], want, atol=2e-5)


def test_a_canvas_of_partial_blocks_is_refused():
  model = families.get("llada").config_class(**SIZES)
  with pytest.raises(Exception, match="must be a positive multiple of the block size 4"):
    views.response_width(model, 4, 10, "config decode.max_new_tokens")
  assert views.response_width(families.get("sdar").config_class(**SIZES), 4, 10, "x") == 0


@pytest.mark.parametrize("name", ["llada", "dream"])
def test_t3d_step_on_a_2x2x2_mesh_equals_one_device(name):
  """The T3D update of a bidirectional family, sharded over data x fsdp x tensor of 8
  devices, equals one device: metrics and params after one clip + SGD step <= 1e-6."""
  import optax

  from t3d_jax import sharding
  from t3d_jax.distill.losses import LossConfig
  from t3d_jax.distill.step import make_train_step
  from t3d_jax.train import sharded
  from t3d_jax.train.trainer import OptimConfig, copy_tree

  model = families.get(name).config_class(**SIZES)
  params = init_params(model, jax.random.key(4))
  rng = np.random.RandomState(5)
  prompts = [rng.randint(1, MASK, n).tolist() for n in (3, 6, 2, 5, 4, 6, 1, 3)]
  resp = [rng.randint(1, MASK, rng.randint(5, CANVAS + 1)).tolist() for _ in prompts]
  smap = [rng.permutation(len(r)).tolist() for r in resp]
  smap = [[s + 1 for s in m] for m in smap]
  padded = pad_batch(prompts, resp, smap, pad_id=PAD, multiple_of=BLOCK,
                     response_width=CANVAS)
  ex = build_examples(padded["prompt_ids"], padded["response_ids"], padded["step_map"],
                      np.arange(8), ExampleConfig(block_size=BLOCK), pad_id=PAD, mask_id=MASK,
                      vocab_size=V, response_len=padded["response_len"])
  batch = {k: ex[k][None] for k in ("ids", "positions", "labels", "p_mask", "step_map")}
  batch["weight"] = ex["keep"].astype(np.float32)[None]
  loss, optim = LossConfig(block_size=BLOCK, path_k_steps=2), OptimConfig()
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.5))
  step = make_train_step(model, loss, optim, mask_id=MASK, pad_id=PAD)
  out = {}
  for shape in ((1, 1, 1), (2, 2, 2)):
    mesh = sharding.make_mesh(dict(zip(sharding.MESH_AXES, shape)),
                              devices=jax.devices()[:int(np.prod(shape))])
    sh = sharded.train_shardings(model, tx, mesh, sharding.DEFAULT_RULES)
    p = sharding.shard_tree(jax.device_get(params), sh.params)
    state = sharded.create_train_state(p, tx, sh)
    new, metrics = sharded.jit_train_step(step, sh)(
        state, copy_tree(p), sharding.make_global_batch(batch, sh.batch), jax.random.key(1))
    out[shape] = jax.device_get((new.params, metrics))
  (p1, m1), (p8, m8) = out[(1, 1, 1)], out[(2, 2, 2)]
  for k in ("loss", "loss_path", "grad_norm", "logp_target_real"):
    np.testing.assert_allclose(float(m8[k]), float(m1[k]), rtol=1e-6, atol=1e-7, err_msg=k)
  for a, b in zip(jax.tree.leaves(p8), jax.tree.leaves(p1)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0)


def test_arch_family_picks_the_config_class():
  """config.arch.family chooses the config class a model trained from scratch gets (the
  pretrain mode and bench memory read it), vocab_size 0 takes the tokenizer's."""
  from t3d_jax.config_base import base_config
  from t3d_jax.errors import InputError
  arch = base_config().arch
  for name, fam in families.FAMILIES.items():
    arch.family = name
    cfg = families.arch_config(arch, vocab_size=50)
    assert type(cfg) is fam.config_class and cfg.vocab_size == 50
  arch.family = "gpt2"
  with pytest.raises(InputError, match="config arch.family='gpt2' is not one of sdar, llada, dream"):
    families.arch_config(arch, vocab_size=50)
  arch.family, arch.num_heads = "llada", 0
  with pytest.raises(InputError, match="config arch: "):
    families.arch_config(arch, vocab_size=50)
