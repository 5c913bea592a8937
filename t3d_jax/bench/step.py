"""T3D update-step cost: our jitted step vs the released algorithm rebuilt in PyTorch.

    python -m t3d_jax.bench step [--layers 8 --hidden 512 ...] [--updates 3] [--profile DIR]

Both sides train the same random ~50M-parameter Qwen3/SDAR model on the same batch
(``--batch`` examples per update, prompt ``--l0``, response ``--l1``, accumulation over
micro-batches of ``--micro``; the released trainer only runs micro-batches of 1). The
updates alternate between the two sides, so a drift of the machine's load hits both;
the speed-up is the ratio of the medians, with the range of the per-pair ratios.

``--profile DIR`` traces the jax updates once more and splits their op time by kind
(matmul, transpose/copy, slice/update, fill, other; t3d_jax.bench.profile) and counts
minor page faults per update. Events of concurrently running ops overlap; for an exact
split run single-threaded:
    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
      taskset -c 0 python -m t3d_jax.bench step --skip-torch --profile /tmp/trace

The PyTorch side follows the released trainer (docs/method.md §2-§3, §5): per example
it builds the block mask with Python loops over blocks, runs the frozen reference twice
and the target twice (real and fake log-likelihoods), rebuilds the path-loss states
level by level with Python loops, backpropagates, then clips and steps AdamW.

MFU = model FLOPs per update / update time / peak, where the peak is a dense matmul in
the compute dtype (``--dtype``; the params stay fp32) measured in this run
(t3d_jax.bench.limits.matmul_peak). ``--attention`` picks the kernel (model.attention).
The PyTorch side runs in fp32 only: at another ``--dtype`` it is skipped.

Model FLOPs count what T3D needs: one target forward + backward (3x forward) and one
reference forward per example, each forward counting only the work whose result the
losses use, whichever side does more:
* the layers on all N = L0 + 2*L1 rows, except the last layer's queries, attention
  output, o-projection and MLP, needed on the L1 noisy rows only (the other rows serve
  as keys and values);
* the head on the L1 noisy rows (no other row's logits are read; the prompt and clean
  rows are context);
* attention over the score blocks the training mask does not hide entirely: C^2 +
  L1 * (C + block) query-key pairs per layer, C = L0 + L1 (context rows x context keys,
  noisy rows x context keys and their own block), not the N^2 of dense attention.

``--families sdar,llada,dream`` times the jitted step of each family on the same sizes
and batch, interleaved, with each one's time relative to the first. A bidirectional
family trains each (example, block) as its own row of C tokens (docs/method.md §2b):
its model FLOPs count L1/block rows per example, every layer on all C tokens but the
last (the block's rows only), C^2 query-key pairs per layer, the head on the block.
The PyTorch side (the released algorithm) is SDAR's only.
"""
from __future__ import annotations

import argparse
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from t3d_jax.bench import limits
from t3d_jax.bench.profile import op_breakdown
from t3d_jax.distill.examples import ExampleConfig, build_examples
from t3d_jax.distill.losses import LossConfig
from t3d_jax.distill.step import make_train_step
from t3d_jax.models import family as families
from t3d_jax.models.sdar import REMAT, SDARConfig, init_params
from t3d_jax.train.trainer import OptimConfig, TrainState, make_optimizer


def parse(argv):
  p = argparse.ArgumentParser(prog="python -m t3d_jax.bench step", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--vocab", type=int, default=32000)
  p.add_argument("--hidden", type=int, default=512)
  p.add_argument("--intermediate", type=int, default=1408)
  p.add_argument("--layers", type=int, default=8)
  p.add_argument("--heads", type=int, default=8)
  p.add_argument("--kv-heads", type=int, default=4)
  p.add_argument("--head-dim", type=int, default=64)
  p.add_argument("--tie", action="store_true",
                 help="tie the LM head to the input embedding (tie_word_embeddings)")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--micro", type=int, default=1)
  p.add_argument("--l0", type=int, default=64)
  p.add_argument("--l1", type=int, default=128)
  p.add_argument("--block", type=int, default=8)
  p.add_argument("--updates", type=int, default=3)
  p.add_argument("--remat", default="dots", choices=sorted(REMAT),
                 help="what each layer's backward recomputes (config model.remat)")
  p.add_argument("--dtype", default="float32", help="compute dtype (model.dtype)")
  p.add_argument("--attention", default="dense", help="kernel (model.attention)")
  p.add_argument("--families", default="sdar",
                 help="comma list of model families to time side by side (sdar, llada, "
                      "dream); the PyTorch side runs for sdar only")
  p.add_argument("--skip-torch", action="store_true")
  p.add_argument("--profile", metavar="DIR", default="",
                 help="also trace --updates jax updates into DIR and print their op time "
                      "by kind (t3d_jax.bench.profile)")
  return p.parse_args(argv)


def make_data(a, cfg: SDARConfig, pad: int, mask: int):
  rng = np.random.RandomState(0)
  prompts = rng.randint(10, cfg.vocab_size - 10, (a.batch, a.l0))
  for i in range(a.batch):
    prompts[i, : rng.randint(0, a.l0 // 2)] = pad
  resp = rng.randint(10, cfg.vocab_size - 10, (a.batch, a.l1))
  step_map = np.stack([np.concatenate([rng.permutation(a.block) + 1 + a.block * k
                                       for k in range(a.l1 // a.block)])
                       for _ in range(a.batch)])
  ex = build_examples(prompts, resp, step_map, np.arange(a.batch), ExampleConfig(
      block_size=a.block), pad_id=pad, mask_id=mask, vocab_size=cfg.vocab_size)
  return ex


def model_flops(cfg: SDARConfig, prompt_len: int, response_len: int, block: int) -> float:
  """FLOPs of one example's T3D update, counting the work the losses need (module doc)."""
  h, L = cfg.hidden_size, cfg.num_layers
  n, ctx = prompt_len + 2 * response_len, prompt_len + response_len
  kv = 2 * h * cfg.head_dim * cfg.num_kv_heads                 # k, v projections
  rows = 2 * h * cfg.head_dim * cfg.num_heads + 3 * h * cfg.intermediate_size  # q, o, mlp
  pairs = ctx * ctx + response_len * (ctx + block)
  attn = 4 * cfg.num_heads * cfg.head_dim
  fwd = (2 * n * L * kv + 2 * ((L - 1) * n + response_len) * rows
         + attn * ((L - 1) * pairs + response_len * (ctx + block))
         + 2 * response_len * h * cfg.vocab_size)
  return 4.0 * fwd  # target fwd + bwd (3x) + reference fwd (1x)


def view_flops(cfg: SDARConfig, prompt_len: int, response_len: int, block: int) -> float:
  """The same for a bidirectional family: L1 / block rows of C = L0 + L1 tokens."""
  h, L = cfg.hidden_size, cfg.num_layers
  c = prompt_len + response_len
  kv = 2 * h * cfg.head_dim * cfg.num_kv_heads
  rows = 2 * h * cfg.head_dim * cfg.num_heads + 3 * h * cfg.intermediate_size
  attn = 4 * cfg.num_heads * cfg.head_dim
  row = (2 * c * L * kv + 2 * ((L - 1) * c + block) * rows
         + attn * ((L - 1) * c * c + block * c) + 2 * block * h * cfg.vocab_size)
  return 4.0 * row * (response_len // block)


def jax_update(a, cfg, ex, pad, mask):
  """(compile seconds, update(k) running one update, the compiled step's HLO text)."""
  optim = OptimConfig(lr=1e-5, warmup_steps=1, total_steps=100)
  step = jax.jit(make_train_step(cfg, LossConfig(block_size=a.block), optim, mask_id=mask,
                                 pad_id=pad), donate_argnums=0)
  params = init_params(cfg, jax.random.key(0))
  ref = jax.tree.map(jnp.copy, params)
  acc = a.batch // a.micro
  batch = {k: jnp.asarray(ex[k]).reshape((acc, a.micro) + ex[k].shape[1:])
           for k in ("ids", "positions", "labels", "p_mask", "step_map")}
  batch["weight"] = jnp.ones((acc, a.micro), jnp.float32)
  box = [TrainState.create(params, make_optimizer(optim))]
  t = time.perf_counter()
  compiled = step.lower(box[0], ref, batch, jax.random.key(0)).compile()
  compile_s = time.perf_counter() - t

  def update(k):
    box[0], m = compiled(box[0], ref, batch, jax.random.key(k))
    jax.block_until_ready(m)
  update(0)  # warm-up
  return compile_s, update, compiled.as_text()


def torch_update(a, cfg, ex, pad, mask):
  """update() running one update of the released algorithm, per example (micro-batches
  of one), in PyTorch."""
  import torch
  import torch.nn.functional as F
  import transformers
  torch.manual_seed(0)
  hf = transformers.Qwen3Config(
      vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
      intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
      num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
      head_dim=cfg.head_dim, tie_word_embeddings=cfg.tie_word_embeddings)
  hf._attn_implementation = "sdpa"
  model = transformers.Qwen3ForCausalLM(hf).train()
  ref = transformers.Qwen3ForCausalLM(hf).eval()
  ref.load_state_dict(model.state_dict())
  opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.999), eps=1e-8,
                          weight_decay=0.01)
  L0, L1, b, k_steps = a.l0, a.l1, a.block, 4
  N = L0 + 2 * L1

  def basic_mask():  # block loops, as the released make_basic_block_attention
    m = torch.zeros(N, N, dtype=torch.bool)
    for bi in range((L1 + b - 1) // b):
      lo, hi = bi * b, min((bi + 1) * b, L1)
      m[L0 + L1 + lo:L0 + L1 + hi, :L0 + lo] = True
      m[L0 + L1 + lo:L0 + L1 + hi, L0 + L1 + lo:L0 + L1 + lo + b] = True
      m[L0 + lo:L0 + hi, :L0 + hi] = True
    for bi in range((L0 + b - 1) // b):
      end, start = max(L0 - bi * b, 0), max(L0 - (bi + 1) * b, 0)
      m[start:end, :end] = True
    return m

  def logp(mdl, ids, attn, pos, labels, pm):
    logits = mdl(input_ids=ids, attention_mask=attn, position_ids=pos).logits
    logits = torch.cat([logits[:, :L0], logits[:, L0 + L1:]], 1)
    lp = torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None])[..., 0]
    return (lp * pm).sum(1) / pm.sum(1), logits

  def path_loss(logits, x0, smap):  # per level, per block Python loops (batch of one)
    losses = []
    resp = x0[0, L0:]
    for s in range((b + k_steps - 1) // k_steps):
      keep = torch.zeros(L1, dtype=torch.bool)
      for bi in range(L1 // b):
        blk = smap[0, bi * b:(bi + 1) * b]
        order = torch.argsort(blk)
        keep[bi * b + order[: (s + 1) * k_steps]] = True
      keep &= resp != pad
      if keep.any():
        losses.append(F.cross_entropy(logits[0, L0:][keep], resp[keep]))
    return torch.stack(losses).mean()

  ids_all = torch.tensor(np.array(ex["ids"]), dtype=torch.long)
  pos_all = torch.tensor(np.array(ex["positions"]), dtype=torch.long)
  lab_all = torch.tensor(np.array(ex["labels"]), dtype=torch.long)
  pm_all = torch.tensor(np.array(ex["p_mask"])).float()
  sm_all = torch.tensor(np.array(ex["step_map"]), dtype=torch.long)

  def update():
    opt.zero_grad()
    for i in range(a.batch):
      ids, pos, lab, pm = ids_all[i:i + 1], pos_all[i:i + 1], lab_all[i:i + 1], pm_all[i:i + 1]
      attn = basic_mask()[None].clone()
      attn[:, :, :L0] &= ~(ids[:, None, :L0] == pad)
      empty = ~attn.any(-1)
      empty[:, L0:] = False
      attn[empty] = torch.nn.functional.one_hot(torch.nonzero(empty)[:, 1], N).bool()
      attn = attn[:, None]
      with torch.no_grad():
        ref_real, ref_logits = logp(ref, ids, attn, pos, lab, pm)
        fake = ref_logits.argmax(-1)
        ref_fake, _ = logp(ref, ids, attn, pos, fake, pm)
      tgt_real, tgt_logits = logp(model, ids, attn, pos, lab, pm)
      tgt_fake, _ = logp(model, ids, attn, pos, fake, pm)
      loss_real = -F.logsigmoid(0.1 * (tgt_real - ref_real)).mean()
      loss_fake = -0.5 * F.logsigmoid(-0.1 * (tgt_fake - ref_fake)).mean()
      loss = loss_real + loss_fake + 0.2 * path_loss(tgt_logits, lab, sm_all[i:i + 1])
      (loss / a.batch).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()

  update()  # warm-up
  return update


def timed(fn) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def profile_jax(update, hlo: str, trace_dir: str, updates: int) -> dict[str, float]:
  """Seconds per update by kind of op (bench.profile) and minor page faults per update."""
  r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  with jax.profiler.trace(trace_dir):
    for k in range(updates):
      update(k)
  faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / updates
  return dict(op_breakdown(trace_dir, hlo, calls=updates), page_faults=faults)


def main(argv=None) -> int:
  a = parse(argv)
  if a.batch % a.micro or a.l1 % a.block:
    raise SystemExit("--batch must be a multiple of --micro and --l1 of --block")
  names = [n.strip() for n in a.families.split(",") if n.strip()]
  cfgs = {n: families.get(n).config_class(
      vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
      num_layers=a.layers, num_heads=a.heads, num_kv_heads=a.kv_heads, head_dim=a.head_dim,
      tie_word_embeddings=a.tie, remat=a.remat, dtype=a.dtype, attention=a.attention)
      for n in names}
  cfg = cfgs[names[0]]
  pad, mask = 0, a.vocab - 1
  ex = make_data(a, cfg, pad, mask)
  n_params = sum(x.size for x in jax.tree.leaves(jax.eval_shape(
      lambda: init_params(cfg, jax.random.key(0)))))
  peak = limits.matmul_peak(dtype=a.dtype)

  def flops_of(c):
    bidirectional = families.of_config(c).attention == "bidirectional"
    return (view_flops if bidirectional else model_flops)(c, a.l0, a.l1, a.block) * a.batch
  steps = {n: jax_update(a, c, ex, pad, mask) for n, c in cfgs.items()}
  compile_s, jax_step, hlo = steps[names[0]]
  # the released algorithm (PyTorch) is block-causal: it runs beside the first such family
  causal = next((n for n in names if families.get(n).attention == "block_causal"), None)
  with_torch = causal is not None and not a.skip_torch and a.dtype == "float32"
  torch_step = torch_update(a, cfgs[causal], ex, pad, mask) if with_torch else None
  times, torch_t = {n: [] for n in names}, []
  for k in range(a.updates):  # interleaved, so a drifting machine load hits every side
    for n in names:
      times[n].append(timed(lambda: steps[n][1](k + 1)))
    if torch_step is not None:
      torch_t.append(timed(torch_step))
  jax_t = times[causal or names[0]]
  jax_s = float(np.median(jax_t))
  flops = flops_of(cfgs[causal or names[0]])
  print(f"model {n_params / 1e6:.1f}M params; batch {a.batch} x (L0 {a.l0} + 2*L1 {a.l1}), "
        f"micro-batch {a.micro}, block {a.block}, remat {a.remat}, {a.dtype}, attention "
        f"{a.attention}; {jax.devices()[0].platform}, {a.dtype} matmul peak "
        f"{peak / 1e9:.1f} GFLOP/s; median of {a.updates} updates")
  print(f"{'step':<34}{'s/update':>10}{'MFU':>8}")
  first = float(np.median(times[names[0]]))
  for n in names:
    s = float(np.median(times[n]))
    vs = (f", {s / first:.2f}x {names[0]} (pairs {min(np.divide(times[n], times[names[0]])):.2f}"
          f"-{max(np.divide(times[n], times[names[0]])):.2f})" if n != names[0] else "")
    print(f"{'t3d_jax ' + n + ' (jit)':<34}{s:>10.2f}{flops_of(cfgs[n]) / s / peak:>8.1%}"
          f"   (compile {steps[n][0]:.1f}s{vs})")
  if torch_t:
    torch_s = float(np.median(torch_t))
    ratios = np.asarray(torch_t) / np.asarray(jax_t)
    print(f"{'released algorithm, PyTorch':<34}{torch_s:>10.2f}{flops / torch_s / peak:>8.1%}")
    print(f"speed-up: {torch_s / jax_s:.2f}x (per interleaved pair: min {ratios.min():.2f}x, "
          f"max {ratios.max():.2f}x)")
  if a.profile:
    split = profile_jax(jax_step, hlo, a.profile, max(a.updates, 1))
    faults = split.pop("page_faults")
    total = sum(split.values())
    print(f"t3d_jax op time per update by kind (trace in {a.profile}; events of concurrent "
          f"ops overlap, so run single-threaded for an exact split): {total:.2f}s")
    for kind, sec in split.items():
      print(f"  {kind:<16}{sec:>8.2f}s {sec / max(total, 1e-12):>7.1%}")
    print(f"  minor page faults per update: {faults:,.0f} (fresh temporary buffers)")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
