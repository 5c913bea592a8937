"""pretrain mode: masked-diffusion training from scratch (words task) and SFT of a
converted model through the CLI, with resume; the loss falls on the words task."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from t3d_jax.convert import load_params
from t3d_jax.data import tokenizer as tok_lib
from t3d_jax.train.trainer import OptimConfig, TrainState, make_optimizer, make_train_step
from t3d_jax.models.sdar import SDARConfig, init_params
from t3d_jax.tasks import words
from t3d_jax.train import pretrain as pt
from tiny_setup import make_model_dir

REPO = Path(__file__).resolve().parents[1]


def cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  return subprocess.run([sys.executable, "-m", "t3d_jax.main", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


def test_batch_layout_and_loss_falls_on_the_words_task(tmp_path):
  words.build_tokenizer(tmp_path / "tok")
  tok = tok_lib.load_tokenizer(tmp_path / "tok")
  ids = tok_lib.special_ids(tok)
  rows = words.make_rows(64, seed=0, min_words=4, max_words=4)
  prompts = tok_lib.encode(tok, [words.PROMPT_TEMPLATE.format(question=r["question"])
                                 for r in rows])
  answers = tok_lib.encode(tok, [r["answer"] for r in rows])
  pairs = pt.make_pairs(prompts, answers, ids.eos_id, max_gen_length=64)
  assert pairs[0].response_ids[-1] == ids.eos_id and len(pairs[0].response_ids) == 17
  ex = pt.PretrainExamples(block_size=4)
  b = pt.make_batch(pairs, np.arange(32), ex, micro_batch=16, length_bucket=4,
                    pad_id=ids.pad_id, mask_id=ids.mask_id, seed=0, step=0)
  assert b["ids"].shape == (2, 16, 16 + 2 * 20) and b["labels"].shape == (2, 16, 36)
  again = pt.make_batch(pairs, np.arange(32), ex, micro_batch=16, length_bucket=4,
                        pad_id=ids.pad_id, mask_id=ids.mask_id, seed=0, step=0)
  assert all(np.array_equal(b[k], again[k]) for k in b)  # noise from (seed, step, index)
  xt = b["ids"][..., 36:]
  trained, x0 = b["p_mask"][..., 16:], b["labels"][..., 16:]
  assert np.all(xt[trained] == ids.mask_id) and trained.any()
  assert np.all((xt == x0) | (xt == ids.mask_id))  # xt: x0 with some tokens masked
  assert np.all(b["p_mask"][..., :16] == 0)  # prompts are never trained
  cfg = SDARConfig(vocab_size=words.VOCAB_SIZE, hidden_size=32, intermediate_size=64,
                   num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16)
  o = OptimConfig(lr=3e-3, warmup_steps=2, total_steps=40, weight_decay=0.0)
  tx = make_optimizer(o)
  step = jax.jit(make_train_step(lambda p, r, mb, k: pt.micro_loss(
      p, r, mb, k, model=cfg, block_size=4, pad_id=ids.pad_id, mask_id=ids.mask_id), o))
  state = TrainState.create(init_params(cfg, jax.random.key(0)), tx)
  losses = []
  for s in range(40):
    batch = pt.make_batch(pairs, np.arange(32) + 32 * (s % 2), ex, micro_batch=16,
                          length_bucket=4, pad_id=ids.pad_id, mask_id=ids.mask_id, seed=0,
                          step=s)
    state, m = step(state, None, batch, jax.random.key(0))
    losses.append(float(m["loss"]))
  assert np.isfinite(losses).all() and 0 < losses[0] < 20
  assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  root = tmp_path_factory.mktemp("sft")
  return root, make_model_dir(root)


def sft(work, model, *extra):
  return cli("--config", "configs/pretrain.py", f"--config.workdir={work}",
             f"--config.pretrain.init={model}", "--config.pretrain.data=gsm8k_test",
             "--config.pretrain.limit=16", "--config.pretrain.max_gen_length=48",
             "--config.pretrain.global_batch=8", "--config.pretrain.micro_batch=4",
             "--config.pretrain.length_bucket=16", "--config.pretrain.checkpoint_every=2",
             "--config.pretrain.async_checkpoint=False", "--config.pretrain.optim.lr=1e-3",
             *extra)


def test_sft_of_a_converted_model_writes_a_model_dir_and_resumes(tiny, tmp_path):
  root, model = tiny
  work = tmp_path / "w"
  r = sft(work, model, "--config.pretrain.max_steps=2")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "[pretrain] 2 updates" in r.stdout
  new, cfg = load_params(work / "model")
  old, old_cfg = load_params(model)
  assert cfg.replace(dtype="float32") == old_cfg.replace(dtype="float32")
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(old)))
  assert (work / "model/hf_meta/tokenizer.json").is_file()
  metrics = [json.loads(x) for x in (work / "pretrain/metrics.jsonl").read_text().splitlines()]
  assert metrics and all(np.isfinite(m["loss"]) and 0 < m["mask_frac"] <= 1 for m in metrics)
  r = sft(work, model, "--config.pretrain.max_steps=2")  # finished: resumes at the end
  assert r.returncode == 0 and "pretrain: resuming from step 2" in r.stderr
  r = sft(work, model, "--config.pretrain.max_steps=2", "--config.pretrain.optim.lr=0.5")
  assert r.returncode == 2 and "settings differ: pretrain.optim.lr: 0.001 -> 0.5)" in r.stderr


@pytest.mark.parametrize("args,msg", [
    (("--config.pretrain.data=",), "needs --config.pretrain.data"),
    (("--config.pretrain.init=/nonexistent",), "/nonexistent"),
    (("--config.pretrain.global_batch=6",), "not a multiple of pretrain.micro_batch"),
    (("--config.pretrain.global_batch=64", "--config.pretrain.micro_batch=64"),
     "fewer than pretrain.global_batch"),
])
def test_bad_input_is_one_clear_error(tiny, tmp_path, args, msg):
  _, model = tiny
  r = sft(tmp_path / "w", model, *args)
  assert r.returncode == 2 and msg in r.stderr, r.stderr[-2000:]


def test_scratch_without_tokenizer_names_the_modes_that_write_one(tmp_path):
  r = cli("--config", "configs/pretrain.py", f"--config.workdir={tmp_path}")
  assert r.returncode == 2 and r.stderr.strip() == (
      f"error: {tmp_path}/tokenizer: no tokenizer (run --config.mode=tokenizer for your own "
      "data, --config.mode=task for the demo task, or set --config.tokenizer_dir to a "
      "Hugging Face tokenizer dir)")


def test_pretrain_examples():
  """Masking follows t ~ U(eps, 1] per example over the response + post_num pads."""
  import jax.numpy as jnp
  from t3d_jax import masks
  from t3d_jax.train.examples import example_seeds
  from test_distill_examples import MASK, PAD, make_batch, resp_part
  prompt, resp, step, rlen = make_batch(b=64, l1=40, seed=14)
  b, l1 = resp.shape
  l0 = prompt.shape[1]
  cfg = pt.PretrainExamples(post_num=2, mask_eps=0.05)
  out = pt.build_pretrain_examples(prompt, resp, example_seeds(0, 0, np.arange(b)), cfg,
                                   pad_id=PAD, mask_id=MASK, response_len=rlen)
  t = out["t"]
  assert ((t > 0.05) & (t <= 1.0)).all() and t.std() > 0.1
  xt, pm = resp_part(out, l0, l1)
  offs = np.arange(l1)[None] - rlen[:, None]
  elig = offs < 2
  np.testing.assert_array_equal(out["num_eligible"], elig.sum(1))
  assert (pm <= elig).all()
  np.testing.assert_array_equal(xt == MASK, pm | ~elig)
  np.testing.assert_array_equal(xt[~pm & elig], resp[~pm & elig])
  # masked fraction follows t
  frac = pm.sum(1) / elig.sum(1)
  big = elig.sum(1) >= 20
  assert np.abs(frac[big] - t[big]).mean() < 0.12
  assert np.corrcoef(frac[big], t[big])[0, 1] > 0.8
  np.testing.assert_array_equal(out["positions"],
                                np.asarray(masks.training_positions(jnp.asarray(out["ids"]), l0, PAD)))


def test_diffusion_ce_matches_numpy():
  import jax.numpy as jnp
  from test_distill_losses import L0, L1, fixed_case, np_log_softmax, np_mean_logp
  logits, x0, _, p_mask = fixed_case()
  t = np.array([0.3, 1.0, 0.05, 0.7, 0.5], np.float32)
  n_elig = np.array([11, 11, 8, 11, 4])
  got = pt.diffusion_ce(jnp.asarray(logits), jnp.asarray(x0), jnp.asarray(p_mask),
                        jnp.asarray(t), jnp.asarray(n_elig))
  ref = []
  for b in range(5):
    lp = np_log_softmax(logits[b])
    ref.append(sum(-lp[i, x0[b, i]] for i in range(L0 + L1) if p_mask[b, i]) / t[b] / n_elig[b])
  np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-5)
  loss, m = pt.pretrain_loss(jnp.asarray(logits), jnp.asarray(x0), jnp.asarray(p_mask),
                             jnp.asarray(t), jnp.asarray(n_elig))
  np.testing.assert_allclose(float(loss), np.mean(ref), rtol=1e-5)
  np.testing.assert_allclose(float(m["masked_nll"]),
                             -np_mean_logp(logits, x0, p_mask).mean(), atol=1e-5)
