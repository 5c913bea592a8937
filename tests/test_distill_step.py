"""The T3D update step: accumulation = one big batch, schedule, reference refresh, values."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t3d_jax.distill.examples import ExampleConfig, build_examples
from t3d_jax import masks
from t3d_jax.distill.losses import LossConfig, loss_rows, t3d_loss
from t3d_jax.distill.step import make_train_step
from t3d_jax.train import trainer
from t3d_jax.train.trainer import (OptimConfig, TrainState, clip_by_global_norm, copy_tree,
                                   lr_schedule, make_optimizer)
from t3d_jax.models import SDARConfig, forward, init_params

V, PAD, MASK = 64, 0, 63
MODEL = SDARConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_layers=2,
                   num_heads=4, num_kv_heads=2, head_dim=8)
LOSS = LossConfig(block_size=4, path_k_steps=2)


def make_batch(n=4, seed=0):
  rng = np.random.RandomState(seed)
  L0, L1 = 6, 8
  prompts = rng.randint(1, MASK, (n, L0))
  prompts[0, :2] = PAD
  resp = rng.randint(1, MASK, (n, L1))
  resp[1, 6:] = PAD
  step_map = np.stack([np.concatenate([rng.permutation(4) + 1 + 4 * k for k in range(2)])
                       for _ in range(n)])
  ex = build_examples(prompts, resp, step_map, np.arange(n) + seed, ExampleConfig(block_size=4),
                      pad_id=PAD, mask_id=MASK, vocab_size=V)
  return {k: ex[k] for k in ("ids", "positions", "labels", "p_mask", "step_map")} | {
      "weight": ex["keep"].astype(np.float32)}


def split(batch, a):
  return jax.tree.map(lambda x: jnp.asarray(x).reshape((a, -1) + x.shape[1:]), batch)


def run(params, batch, accum, optim=OptimConfig(lr=1e-3, warmup_steps=2, total_steps=10)):
  tx = make_optimizer(optim)
  step = jax.jit(make_train_step(MODEL, LOSS, optim, mask_id=MASK, pad_id=PAD))
  state, metrics = step(TrainState.create(params, tx), params, split(batch, accum),
                        jax.random.key(1))
  return state, metrics


def test_accumulation_equals_one_batch():
  params = init_params(MODEL, jax.random.key(0))
  batch = make_batch()
  batch["weight"][2] = 0.0  # a dropped example: weight 0 in either layout
  optim = OptimConfig()
  acc = jax.jit(make_train_step(MODEL, LOSS, optim, mask_id=MASK, pad_id=PAD).accumulate)
  rng = jax.random.key(1)
  g1, m1 = acc(params, params, split(batch, 1), rng)
  for a in (4, 2):
    g, m = acc(params, params, split(batch, a), rng)
    for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g)):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6, rtol=0)
    for k in ("loss", "loss_total", "loss_path", "logp_target_real", "logp_ref_fake"):
      np.testing.assert_allclose(float(m1[k]), float(m[k]), rtol=1e-6, atol=1e-7)
  # and the optimiser step built on it runs the same accumulation
  s1, _ = run(params, batch, 1)
  s4, _ = run(params, batch, 4)
  for x, y in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s4.params)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5, rtol=0)


def test_first_step_values_with_reference_equal_to_target():
  """With reference = target, every DDO logit difference is 0: loss_real = log 2,
  loss_fake = alpha * log 2, whatever the batch."""
  params = init_params(MODEL, jax.random.key(0))
  _, m = run(params, make_batch(), 2)
  np.testing.assert_allclose(float(m["loss_real"]), np.log(2), rtol=1e-6)
  np.testing.assert_allclose(float(m["loss_fake"]), LOSS.alpha * np.log(2), rtol=1e-6)
  np.testing.assert_allclose(float(m["logp_target_real"]), float(m["logp_ref_real"]), rtol=1e-6)
  for k in ("loss", "loss_real", "loss_fake", "logp_target_real", "logp_ref_real",
            "logp_target_fake", "logp_ref_fake", "loss_path", "grad_norm", "lr"):
    assert np.isfinite(float(m[k])), k
  np.testing.assert_allclose(float(m["lr"]), 1e-3 / 2)


@pytest.mark.parametrize("temp", [0.0, 0.7])
def test_step_loss_equals_the_full_rows_dense_loss(temp):
  """micro_loss computes the head on the noisy rows only and attention on the score
  blocks the mask leaves visible; its loss, metrics and gradients are those of the plain
  formulation (every row's logits, dense attention, t3d_loss on [prompt | noisy] rows)."""
  loss_cfg = dataclasses.replace(LOSS, reference_temp=temp)

  def plain(p, r, mb, rng):
    l1 = mb["ids"].shape[-1] - mb["labels"].shape[-1]
    l0 = mb["labels"].shape[-1] - l1
    attn = masks.training_batch_mask(mb["ids"], l0, loss_cfg.block_size, PAD)
    tgt = loss_rows(forward(p, MODEL, mb["ids"], attn, mb["positions"]), l0)
    ref = loss_rows(forward(r, MODEL, mb["ids"], attn, mb["positions"]), l0)
    return t3d_loss(tgt, ref, mb["labels"], mb["p_mask"], mb["step_map"], loss_cfg,
                    prompt_len=l0, mask_id=MASK, pad_id=PAD, rng=rng, weight=mb["weight"])

  params, ref = init_params(MODEL, jax.random.key(0)), init_params(MODEL, jax.random.key(1))
  batch, rng = split(make_batch(6, seed=3), 2), jax.random.key(5)
  g0, m0 = jax.jit(trainer.make_train_step(plain, OptimConfig()).accumulate)(
      params, ref, batch, rng)
  g1, m1 = jax.jit(make_train_step(MODEL, loss_cfg, OptimConfig(), mask_id=MASK,
                                   pad_id=PAD).accumulate)(params, ref, batch, rng)
  for k in m0:
    np.testing.assert_allclose(float(m1[k]), float(m0[k]), rtol=1e-6, atol=1e-7, err_msg=k)
  for x, y in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), atol=1e-6, rtol=0)


def test_schedule():
  o = OptimConfig(lr=1.0, warmup_steps=4, total_steps=14, min_lr_scale=0.1)
  s = lr_schedule(o)
  np.testing.assert_allclose([float(s(k)) for k in range(5)], [0.25, 0.5, 0.75, 1.0, 1.0])
  np.testing.assert_allclose(float(s(9)), 0.1 + 0.9 * 0.5, rtol=1e-6)  # half-way cosine
  np.testing.assert_allclose(float(s(14)), 0.1, rtol=1e-6)
  np.testing.assert_allclose(float(s(100)), 0.1, rtol=1e-6)
  s0 = lr_schedule(OptimConfig(lr=1.0, warmup_steps=4, total_steps=14, min_lr_scale=0.0))
  assert float(s0(14)) == pytest.approx(0.0, abs=1e-7)


def test_reference_refresh_does_not_recompile_and_training_learns():
  params = init_params(MODEL, jax.random.key(0))
  optim = OptimConfig(lr=3e-3, warmup_steps=1, total_steps=30)
  tx = make_optimizer(optim)
  step = jax.jit(make_train_step(MODEL, LOSS, optim, mask_id=MASK, pad_id=PAD),
                 donate_argnums=0)
  state = TrainState.create(copy_tree(params), tx)
  ref = copy_tree(params)
  batch = split(make_batch(), 2)
  first = None
  for k in range(12):
    state, m = step(state, ref, batch, jax.random.key(k))
    first = first if first is not None else float(m["logp_target_real"])
    if (k + 1) % 4 == 0:
      ref = copy_tree(state.params)  # self-play round: reference <- student
  assert step._cache_size() == 1
  assert float(m["logp_target_real"]) > first + 0.5  # the student fits the teacher tokens
  assert int(state.step) == 12


def test_clip_by_global_norm_matches_optax():
  import optax
  params = init_params(MODEL, jax.random.key(0))
  ours, ref = clip_by_global_norm(1.0), optax.clip_by_global_norm(1.0)
  assert jax.tree.structure(ours.init(params)) == jax.tree.structure(ref.init(params))
  for scale in (10.0, 1e-3):  # clipping active, inactive
    g = jax.tree.map(lambda x: x * scale, params)
    a, _ = ours.update(g, ours.init(params))
    b, _ = ref.update(g, ref.init(params))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-9)


def test_weight_decay_mask():
  params = init_params(MODEL.replace(attention_bias=True), jax.random.key(0))
  o = OptimConfig(lr=0.0, weight_decay=0.5, decay_norms_and_biases=False, warmup_steps=0)
  tx = make_optimizer(o)
  zero = jax.tree.map(jnp.zeros_like, params)
  upd, _ = tx.update(zero, tx.init(params), params)
  assert float(jnp.abs(upd["final_norm"]["scale"]).max()) == 0.0  # lr 0: nothing moves


def test_overfit_few_trajectories_student_beats_reference():
  """A fixed reference, a few trajectories: the student's log-likelihood of the teacher
  tokens rises above the reference's and the DDO loss falls."""
  params = init_params(MODEL, jax.random.key(0))
  optim = OptimConfig(lr=3e-3, warmup_steps=1, total_steps=30)
  step = jax.jit(make_train_step(MODEL, LOSS, optim, mask_id=MASK, pad_id=PAD))
  state = TrainState.create(params, make_optimizer(optim))
  batch = split(make_batch(), 2)
  losses = []
  for k in range(10):
    state, m = step(state, params, batch, jax.random.key(k))
    losses.append(float(m["loss"]))
  assert float(m["logp_target_real"]) > float(m["logp_ref_real"]) + 0.5
  assert losses[-1] < losses[0] - 0.05
