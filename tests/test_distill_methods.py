"""distill.method: each objective's loss on a real micro-batch of a tiny model of each
family equals a numpy re-derivation from the same logits (written here, from the
equations in t3d_jax/distill/methods.py; for LLaDA and Dream the logits come from a naive
loop that builds each (example, block) row as the decoder sees it, see
t3d_jax/train/views.py), and each method trains through the CLI."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t3d_jax import masks
from t3d_jax.distill import methods
from t3d_jax.distill.examples import ExampleConfig, build_examples
from t3d_jax.distill.losses import LossConfig
from t3d_jax.models import family as families
from t3d_jax.models import forward, init_params
from t3d_jax.train import pretrain as pt

V, PAD, MASK = 64, 0, 63
SIZES = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
             num_kv_heads=2, head_dim=8)
MODELS = {name: f.config_class(**SIZES) for name, f in families.FAMILIES.items()}
LOSS = LossConfig(block_size=4, path_k_steps=2, alpha=0.7, beta=0.3)
L0, L1 = 6, 8


def _inputs(n=4, seed=0):
  rng = np.random.RandomState(seed)
  prompts = rng.randint(1, MASK, (n, L0))
  prompts[0, :2] = PAD
  resp = rng.randint(1, MASK, (n, L1))
  resp[1, 6:] = PAD
  step_map = np.stack([np.concatenate([rng.permutation(4) + 1 + 4 * k for k in range(2)])
                       for _ in range(n)])
  return prompts, resp, step_map


def trajectory_batch():
  prompts, resp, step_map = _inputs()
  ex = build_examples(prompts, resp, step_map, np.arange(4), ExampleConfig(block_size=4),
                      pad_id=PAD, mask_id=MASK, vocab_size=V)
  mb = {k: ex[k] for k in ("ids", "positions", "labels", "p_mask", "step_map")}
  mb["weight"] = np.array([1.0, 1.0, 0.0, 1.0], np.float32)  # a dropped example
  return mb


def random_mask_batch():
  prompts, resp, _ = _inputs()
  ex = pt.build_pretrain_examples(prompts, resp, np.arange(4), pt.PretrainExamples(
      block_size=4), pad_id=PAD, mask_id=MASK)
  mb = {k: ex[k] for k in pt.BATCH_KEYS}
  mb["weight"] = np.ones(4, np.float32)
  return mb


def noisy_logits(model, params, mb, block=4):
  """The logits scoring each response token at the state xt, float64 [B, L1, V].

  SDAR: the full-layout forward (no row skipping), the noisy rows. LLaDA / Dream: per
  example and block i, the decoder's input [prompt | x0 blocks < i | xt block i | masks]
  with the prompt pads hidden, forwarded alone; token j read from output j - offset."""
  fam = families.of_config(model)
  if fam.attention == "block_causal":
    layout = masks.TrainingLayout.of_batch(mb["ids"].shape[-1], mb["labels"].shape[-1],
                                           block)
    out = forward(params, model, jnp.asarray(mb["ids"]),
                  layout.batch_mask(jnp.asarray(mb["ids"]), PAD), jnp.asarray(mb["positions"]))
    return np.asarray(out, np.float64)[:, L0 + L1:]
  ids = np.asarray(mb["ids"])
  out = np.zeros((len(ids), L1, V))
  for b, row in enumerate(ids):
    prompt, x0, xt = row[:L0], row[L0:L0 + L1], row[L0 + L1:]
    valid = np.concatenate([prompt != PAD, np.ones(L1, bool)])
    pos = np.maximum(np.cumsum(valid) - 1, 0)
    for i in range(L1 // block):
      resp = np.full(L1, MASK)
      resp[:i * block] = x0[:i * block]
      resp[i * block:(i + 1) * block] = xt[i * block:(i + 1) * block]
      x = np.concatenate([prompt, resp])[None]
      mask = np.broadcast_to(valid[None, None, :], (1, len(valid), len(valid)))
      logits = np.asarray(forward(params, model, jnp.asarray(x), jnp.asarray(mask),
                                  jnp.asarray(pos[None])), np.float64)[0]
      for j in range(i * block, (i + 1) * block):
        out[b, j] = logits[L0 + j - fam.prediction_offset]
  return out


def log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def picked(logits, targets):
  return np.take_along_axis(log_softmax(logits), targets[..., None], -1)[..., 0]


def masked_means(values, mask):
  m = mask.astype(np.float64)
  return np.where(m.sum(-1) > 0, (values * m).sum(-1) / np.maximum(m.sum(-1), 1), 0.0)


def wmean(x, w):
  return float((x * w).sum() / w.sum())


def log_sigmoid(x):
  return -np.log1p(np.exp(-x))


def run(method, model, params, ref, mb):
  fn = methods.loss_fn(method, model, LOSS, mask_id=MASK, pad_id=PAD)
  loss, metrics = jax.jit(fn)(params, ref, jax.tree.map(jnp.asarray, mb), jax.random.key(0))
  return float(loss), metrics


@pytest.fixture(scope="module", params=sorted(MODELS))
def models(request):
  """(model config, params, reference params) of each family."""
  model = MODELS[request.param]
  return model, init_params(model, jax.random.key(0)), init_params(model, jax.random.key(1))


def test_ddo_is_the_ddo_loss_alone(models):
  model, params, ref = models
  mb = trajectory_batch()
  tgt, rl = noisy_logits(model, params, mb), noisy_logits(model, ref, mb)
  labels, pm, w = mb["labels"][:, L0:], mb["p_mask"][:, L0:], mb["weight"]
  fake = rl.argmax(-1)
  lt_real, lt_fake = masked_means(picked(tgt, labels), pm), masked_means(picked(tgt, fake), pm)
  lr_real, lr_fake = masked_means(picked(rl, labels), pm), masked_means(picked(rl, fake), pm)
  want = (wmean(-log_sigmoid(LOSS.beta * (lt_real - lr_real)), w)
          + wmean(-LOSS.alpha * log_sigmoid(-LOSS.beta * (lt_fake - lr_fake)), w))
  loss, m = run("ddo", model, params, ref, mb)
  assert loss == pytest.approx(want, rel=1e-5)
  t3d, mt = run("t3d", model, params, ref, mb)  # the same DDO term, plus lambda * path
  assert float(mt["loss"]) == pytest.approx(want, rel=1e-5)
  assert t3d == pytest.approx(want + LOSS.lambda_path * float(mt["loss_path"]), rel=1e-5)


def test_naive_td_is_cross_entropy_on_the_teacher_tokens(models):
  model, params, ref = models
  mb = trajectory_batch()
  lp = masked_means(picked(noisy_logits(model, params, mb), mb["labels"][:, L0:]),
                    mb["p_mask"][:, L0:])
  loss, m = run("naive_td", model, params, ref, mb)
  assert loss == pytest.approx(wmean(-lp, mb["weight"]), rel=1e-5)
  loss_other_ref, _ = run("naive_td", model, params, params, mb)  # no reference in it
  assert loss_other_ref == loss


def test_sft_is_the_masked_diffusion_objective(models):
  model, params, ref = models
  mb = random_mask_batch()
  nll = -picked(noisy_logits(model, params, mb), mb["labels"][:, L0:]) * mb["p_mask"][:, L0:]
  per = nll.sum(-1) / mb["t"] / np.maximum(mb["num_eligible"], 1)
  loss, _ = run("sft", model, params, ref, mb)
  assert loss == pytest.approx(float(per.mean()), rel=1e-5)
  assert 0 < mb["p_mask"].sum() < mb["num_eligible"].sum() + 1  # random masks, some kept


def test_dparallel_is_certainty_forcing_on_a_mask_and_its_complement(models):
  model, params, ref = models
  prompts, resp, _ = _inputs()
  ex = methods.certainty_examples(prompts, resp, np.arange(4), ratio=0.5, post_num=2,
                                  pad_id=PAD, mask_id=MASK)
  pm = ex["p_mask"][:, L0:]
  rlen = (resp != PAD).sum(1)  # example 1 ends at 6: 2 pads trained, none hidden
  eligible = np.arange(L1)[None, :] < np.minimum(rlen + 2, L1)[:, None]
  assert (pm[:4] ^ pm[4:] == eligible).all() and not (pm[:4] & pm[4:]).any()
  mb = {k: ex[k] for k in ("ids", "positions", "labels", "p_mask")}
  mb["weight"] = np.ones(8, np.float32)
  logits = noisy_logits(model, params, mb)
  labels = mb["labels"][:, L0:]
  ce = -masked_means(picked(logits, labels), pm)
  scaled = log_softmax(logits / LOSS.entropy_temperature)
  entropy = -(np.exp(scaled) * scaled).sum(-1)
  right = (logits.argmax(-1) == labels) & pm
  h = masked_means(entropy, right)
  per_example = (ce + LOSS.entropy_weight * h)[:4] + (ce + LOSS.entropy_weight * h)[4:]
  loss, m = run("dparallel", model, params, ref, mb)
  assert loss == pytest.approx(float(per_example.mean()), rel=1e-5)
  assert float(m["entropy"]) == pytest.approx(float(h.mean()), rel=1e-5)
  # the batch: both copies of an example in one micro-batch
  from t3d_jax.distill.data import Sample
  samples = [Sample(tuple(p[p != PAD]), tuple(r[r != PAD]), (), i)
             for i, (p, r) in enumerate(zip(prompts, resp))]
  b = methods.certainty_make_batch(samples, np.arange(4), block_size=4, ratio=0.5,
                                   post_num=2, micro_batch=2, length_bucket=4, pad_id=PAD,
                                   mask_id=MASK, seed=0, step=0)
  assert b["ids"].shape[:2] == (2, 4)
  for a in range(2):
    p0, p1 = b["p_mask"][a, :2], b["p_mask"][a, 2:]
    assert not (p0 & p1).any() and (b["labels"][a, :2] == b["labels"][a, 2:]).all()


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory):
  from tiny_setup import make_model_dir, write_trajectories
  root = tmp_path_factory.mktemp("methods_model")
  make_model_dir(root)
  write_trajectories(root / "traj.jsonl", root / "tokenizer", n=12)
  return root


@pytest.mark.parametrize("method", ["ddo", "naive_td", "sft", "dparallel"])
def test_each_method_trains_through_the_cli(method, cli_model, tmp_path):
  import json
  from test_distill_mode import RUN, distill
  w = tmp_path / "w"
  r = distill(w, cli_model / "model", cli_model / "traj.jsonl",
              f"--config.distill.method={method}")
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"[distill] student ({method}): 4 updates" in r.stdout
  rows = [json.loads(x) for x in (w / RUN / "metrics.jsonl").read_text().splitlines()]
  assert rows[-1]["step"] == 4 and np.isfinite(rows[-1]["loss"])
  assert (w / RUN / "model" / "sdar_config.json").is_file()


def test_an_unknown_method_is_one_line(cli_model, tmp_path):
  from test_distill_mode import distill
  r = distill(tmp_path / "w", cli_model / "model", cli_model / "traj.jsonl",
              "--config.distill.method=dpo")
  assert r.returncode == 2
  assert r.stderr.strip().splitlines()[-1] == (
      "error: config distill.method='dpo' is not one of t3d, ddo, naive_td, sft, dparallel")
