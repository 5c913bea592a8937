"""``python -m t3d_jax.bench sampler --peer sdar``: t3d_jax against SDAR's generate.py.

The peer is t3d_jax.bench.sdar_port (the release's algorithm on stock transformers Qwen3,
same weights, greedy). Settings, each at every s in --peer-steps (block --block,
low_confidence_static, --max-new tokens):

  batch 1         --peer-single prompts of ~--peer-prompt tokens, one call each on both
  N prompts       --peer-batch prompts of ~--peer-prompt tokens: the port one call each
                  (the release decodes one prompt per call), t3d_jax one batched call
  N equal-length  --peer-batch prompts of exactly --peer-prompt tokens: the port patched
                  to batch them (x of shape [N, ...]), t3d_jax one batched call

Each repeat times every setting on both decoders back to back (interleaved); the ratio is
the median of the per-repeat ratios, with their range. Outputs are compared row by row; a
row that differs is explained when the port overwrote prompt-tail tokens (the release's
unclamped reveal count), or, at one step per block (where the block's state at its only
step is known: the same prefix, all masks), when the two best logits at the first
differing token are within ``TIE`` (t3d_jax's forward on the port's prefix): a near-tie
that torch's and XLA's rounding decide differently. Any other difference is flagged
UNEXPLAINED (exit 1).

The same run measures the limits (t3d_jax.bench.limits): the streaming bandwidth, which
bounds a batch-1 forward at weight bytes / bandwidth, and the matmul peak, against which
decode MFU (model FLOPs of the decode over its wall time) is given at --mfu-batches. The
table's ``ceiling`` is the ratio t3d_jax would reach on its roofline (each decoding call
taking the larger of its model FLOPs at the peak and its forwards' weight reads at the
bandwidth): a ratio goal above it cannot be met on this machine. ``kernels`` is the ratio
t3d_jax would reach if all but its weight matmuls and attention were free and the
attention ran at the matmul peak: the port's time over those matmuls alone, timed at the
shape of each forward t3d_jax ran (limits.matmul_floor), plus the attention's FLOPs at
the peak: a ratio goal at or above it cannot be met with this machine's matmul kernels.
"""
from __future__ import annotations

import functools
import time

import jax
import numpy as np

from t3d_jax import masks
from t3d_jax.bench import limits
from t3d_jax.models.sdar import forward
from t3d_jax.sampling import DecodeConfig, decode_params
from t3d_jax.sampling.batched import pad_prompts

TIE = 1e-4  # top-2 logit gap below which fp32 torch and XLA may pick either token


def tie_gap(params, cfg, dcfg: DecodeConfig, prompt, port_ids, t3d_ids) -> float | None:
  """At one step per block, the gap between the two best logits at the first token where
  the two decoders differ, from t3d_jax's forward of [prompt | the port's tokens before
  that block | a masked block] under the staircase mask; None where that state is not
  the block's only step (s > 1, or the block holds prompt-tail tokens)."""
  b, p = dcfg.block_size, len(prompt)
  j = int(np.flatnonzero(port_ids != t3d_ids)[0])
  start = (p + j) // b * b
  if dcfg.denoising_steps != 1 or start < p:
    return None
  seq = np.concatenate([prompt, port_ids[:start - p], np.full(b, dcfg.mask_id)])[None]
  n = seq.shape[1]
  mask = np.asarray(masks.staircase_mask(n, b))[None]
  logits = np.asarray(forward(params, cfg, seq.astype(np.int32), mask, np.arange(n)[None],
                              logits_start=p + j))[0, 0]
  top = np.sort(logits)[-2:]
  return float(top[1] - top[0])


def add_flags(p, ints) -> None:
  """The peer's flags on the sampler bench's parser ``p``; ``ints`` parses a comma list."""
  p.add_argument("--peer", choices=["sdar"], default=None,
                 help="compare with a peer decoder instead of the standard table")
  p.add_argument("--repeats", type=int, default=3, help="interleaved timing repeats")
  p.add_argument("--peer-steps", type=ints, default=[4, 1],
                 help="comma list of s for the peer table")
  p.add_argument("--peer-prompt", type=int, default=64, help="prompt tokens (about)")
  p.add_argument("--peer-single", type=int, default=4, help="prompts of the batch-1 rows")
  p.add_argument("--peer-batch", type=int, default=16, help="prompts of the batched rows")
  p.add_argument("--mfu-batches", type=ints, default=[16, 64],
                 help="batches of the decode-MFU rows")


class T3D:
  """One compiled t3d_jax decoder for prompt groups of one shape: ``()`` decodes every
  group -> (ids, nfe, seconds)."""

  def __init__(self, make, cfg, dcfg, params, groups):
    self.fn = make(cfg, dcfg)
    # split once, as batched.decode does for its calls (not inside every timed call)
    self.params, self.groups = decode_params(params, dcfg), groups
    self.rng = jax.random.split(jax.random.key(0), groups[0][0].shape[0])
    self.compiled = self.fn.lower(self.params, *groups[0], self.rng).compile()
    self()  # warm

  def __call__(self):
    ids, nfe, t0 = [], [], time.perf_counter()
    for g in self.groups:
      out = jax.block_until_ready(self.compiled(self.params, *g, self.rng, self.fn.knobs))
      ids.append(out["ids"])
      nfe.append(out["nfe"])
    sec = time.perf_counter() - t0
    return np.concatenate(ids), np.concatenate(nfe), sec


def _prompts(rs, n, around, vocab, equal):
  lens = (np.full(n, around) if equal else rs.randint(around - 3, around + 4, size=n))
  return [rs.randint(0, vocab - 1, size=int(p)).astype(np.int32) for p in lens]


class Setting:
  """One table row: the two decoders' timed calls on the same prompts. ``port``: the
  peer's decode of a batch of prompts (sdar_port.generate with its model bound)."""

  def __init__(self, name, s, prompts, per_prompt_t3d, batched_port, make, cfg, dcfg, params,
               port):
    self.name, self.s, self.prompts, self.dcfg = name, s, prompts, dcfg
    self.port, self.batched_port, self.cfg, self.params = port, batched_port, cfg, params
    self.per_prompt = per_prompt_t3d
    groups = [[p] for p in prompts] if per_prompt_t3d else [prompts]
    width = max(len(p) for p in prompts)  # one width: one compile for the batch-1 calls
    self.t3d = T3D(make, cfg, dcfg, params, [pad_prompts(g, len(g), width) for g in groups])
    self.times = {"port": [], "t3d_jax": []}

  def run_port(self):
    groups = [self.prompts] if self.batched_port else [[p] for p in self.prompts]
    t0, ids, wrote = time.perf_counter(), [], []
    for g in groups:
      out, _, ow = self.port(np.stack(g), self.dcfg.mask_id, self.dcfg.max_new_tokens,
                             self.dcfg.block_size, self.s)
      ids.append(out)
      wrote.append(ow)
    self.times["port"].append(time.perf_counter() - t0)
    self.port_ids, self.overwrote = np.concatenate(ids), np.concatenate(wrote)

  def run_t3d(self):
    self.t3d_ids, self.nfe, sec = self.t3d()
    self.times["t3d_jax"].append(sec)

  def _calls(self) -> tuple[np.ndarray, list[list[int]]]:
    """(prompt lengths, the rows of each t3d_jax decoding call)."""
    lens = np.array([len(p) for p in self.prompts])
    rows = range(len(lens))
    return lens, [[r] for r in rows] if self.per_prompt else [list(rows)]

  def roofline_seconds(self, bw: float, peak: float, wbytes: int) -> float:
    """A lower bound on t3d_jax's time here: per decoding call, the larger of its model
    FLOPs at the matmul peak and its forwards' weight reads at the streaming bandwidth
    (the rows of a call ride together: max NFE + the prefill forwards)."""
    lens, calls = self._calls()
    return sum(max(decode_flops(self.cfg, self.dcfg, lens[c], self.nfe[c]) / peak,
                   (int(self.nfe[c].max()) + 1) * wbytes / bw) for c in calls)

  def kernel_seconds(self, floor, peak: float) -> float:
    """t3d_jax's weight matmuls at the shape of each forward it ran (``floor(rows,
    head_rows)`` -> seconds, limits.matmul_floor) plus its attention's FLOPs at the matmul
    ``peak`` (no kernel runs them faster): per decoding call the prefill of the padded
    prompts (no head), then per block after the first either the fused forward (prev +
    block rows, head on the block) or, in 'separate' mode, a commit (block rows, no head),
    and the remaining forwards on the block alone."""
    b, fused = self.dcfg.block_size, self.dcfg.commit_mode == "fused"
    lens, calls = self._calls()
    width = int(lens.max())  # the t3d_jax calls' padded width (T3D's groups)
    total = 0.0
    for c in calls:
      n = len(c)
      blocks = int(_blocks(self.dcfg, lens[c]).max())
      total += floor(n * width, 0) + (blocks - 1) * (
          floor(2 * b * n, b * n) if fused else floor(b * n, 0))
      total += (int(self.nfe[c].max()) - (blocks - 1)) * floor(b * n, b * n)
      total += decode_flops(self.cfg, self.dcfg, lens[c], self.nfe[c],
                            limits.attention_flops) / peak
    return total

  def row(self, bw: float, peak: float, wbytes: int, floor):
    tokens = len(self.prompts) * self.dcfg.max_new_tokens
    port, ours = (np.median(self.times[k]) for k in ("port", "t3d_jax"))
    ratios = np.array(self.times["port"]) / np.array(self.times["t3d_jax"])
    same = (self.port_ids == self.t3d_ids).all(axis=1)
    differ = np.flatnonzero(~same)
    overwrote = [int(r) for r in differ if self.overwrote[r]]
    ties, unexplained = {}, []
    for r in (int(r) for r in differ if not self.overwrote[r]):
      gap = tie_gap(self.params, self.cfg, self.dcfg, self.prompts[r], self.port_ids[r],
                    self.t3d_ids[r])
      if gap is not None and gap < TIE:
        ties[r] = gap
      else:
        unexplained.append(r)
    why = ([f"rows {overwrote}: the port overwrote their prompt tail"] if overwrote else []) + (
        [f"rows {list(ties)}: near-tie (top-2 logit gap "
         f"{', '.join(f'{g:.1e}' for g in ties.values())})"] if ties else []) + (
        [f"UNEXPLAINED {unexplained}"] if unexplained else [])
    note = "all" if same.all() else f"{same.sum()}/{len(same)}; " + "; ".join(why)
    ceiling = port / self.roofline_seconds(bw, peak, wbytes)
    kernels = port / self.kernel_seconds(floor, peak)
    cells = [self.name, str(self.s), f"{tokens / port:.0f}", f"{tokens / ours:.0f}",
             f"{np.median(ratios):.1f}x ({ratios.min():.1f}-{ratios.max():.1f})",
             f"{ceiling:.2f}x", f"{kernels:.2f}x", note]
    return cells, not unexplained


def _blocks(dcfg: DecodeConfig, plen):
  """Blocks decoded for prompts of length ``plen`` (int or array): from the block holding
  the prompt tail to the one holding the last new token."""
  b = dcfg.block_size
  return -(-(plen + dcfg.max_new_tokens) // b) - plen // b


def decode_flops(cfg, dcfg: DecodeConfig, lens, nfe, per_forward=limits.forward_flops) -> float:
  """Model FLOPs of decoding rows of prompt lengths ``lens`` with ``nfe`` forwards each
  (DecodeConfig's count: 'separate' counts its commits, 'fused' does not): the
  whole-block prefill and every commit but the last block's (t3d_jax skips it), both run
  for their KV alone (no LM head), and every denoising forward, each of b tokens against
  the keys up to its block's end; a row's denoising forwards are spread evenly over its
  blocks. ``per_forward(cfg, tokens, context, head=)``: the FLOPs of one forward
  (limits.attention_flops: the attention's alone)."""
  b, total = dcfg.block_size, 0.0
  for plen, n in zip(lens, nfe):
    pre, blocks = int(plen) // b * b, _blocks(dcfg, int(plen))
    denoise = n - (blocks - 1) if dcfg.commit_mode == "separate" else n
    total += per_forward(cfg, pre, pre / 2, head=False) if pre else 0.0
    for k in range(blocks):
      ctx = pre + (k + 1) * b
      total += denoise / blocks * per_forward(cfg, b, ctx)
      if k < blocks - 1:
        total += per_forward(cfg, b, ctx, head=False)
  return total


def run(a, cfg, params, make) -> int:
  import torch  # the peer's side only: the rest of the sampler bench runs without torch

  from t3d_jax.bench import sdar_port
  rs = np.random.RandomState(a.seed)
  model = sdar_port.torch_model(params, cfg)
  base = DecodeConfig(block_size=a.block, max_new_tokens=a.max_new, mask_id=a.vocab - 1,
                      strategy="low_confidence_static")
  print(f"# peer: SDAR generate.py port (transformers Qwen3 + DynamicCache, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads), greedy, b={a.block}, "
        f"{a.max_new} new tokens, {a.repeats} interleaved repeats", flush=True)
  single = _prompts(rs, a.peer_single, a.peer_prompt, a.vocab, equal=False)
  many = _prompts(rs, a.peer_batch, a.peer_prompt, a.vocab, equal=False)
  equal = _prompts(rs, a.peer_batch, a.peer_prompt, a.vocab, equal=True)
  settings = []
  for s in a.peer_steps:
    dcfg = base.replace(denoising_steps=s)
    common = dict(make=make, cfg=cfg, dcfg=dcfg, params=params,
                  port=functools.partial(sdar_port.generate, model))
    settings += [Setting("batch 1", s, single, True, False, **common),
                 Setting(f"{a.peer_batch} prompts (port: one call each)", s, many, False, False,
                         **common),
                 Setting(f"{a.peer_batch} equal-length prompts (port batched)", s, equal, False,
                         True, **common)]
  sdar_port.generate(model, np.stack(single[:1]), base.mask_id, base.block_size * 2,
                     base.block_size)  # warm torch
  for r in range(a.repeats):
    for st in settings:
      st.run_port()
      st.run_t3d()
    print(f"  repeat {r + 1}/{a.repeats} done", flush=True)
  bw, peak = limits.stream_bandwidth(), limits.matmul_peak()
  wbytes = limits.weight_bytes(params, cfg)
  floor = functools.cache(lambda rows, head: limits.matmul_floor(params, cfg, rows, head))
  # ceiling: the ratio t3d_jax would reach at its roofline (Setting.roofline_seconds);
  # kernels: ... if all but its weight matmuls were free and its attention ran at the
  # matmul peak (Setting.kernel_seconds)
  header = ["setting", "s", "port tok/s", "t3d_jax tok/s", "ratio (range)", "ceiling",
            "kernels", "identical rows"]
  print(" | ".join(header))
  print(" | ".join("---" for _ in header))
  ok = True
  for st in settings:
    cells, fine = st.row(bw, peak, wbytes, floor)
    ok &= fine
    print(" | ".join(cells))
  _limits(a, cfg, params, make, settings, base, rs, bw, peak, wbytes, floor)
  return 0 if ok else 1


def _limits(a, cfg, params, make, settings, base, rs, bw, peak, wbytes, floor) -> None:
  print(f"# limits: streaming bandwidth {bw / 1e9:.1f} GB/s, matmul peak {peak / 1e9:.0f} "
        f"GFLOP/s (fp32 2048^2); weights read per forward {wbytes / 1e6:.1f} MB -> "
        f"weight-stream limit {wbytes / bw * 1e3:.2f} ms per forward")
  one = floor(a.block, a.block)
  print(f"  the model's weight matmuls alone at {a.block} rows (one batch-1 block): "
        f"{one * 1e3:.2f} ms = {one / (wbytes / bw):.2f}x the weight-stream limit "
        f"(the matmul kernels' floor at this shape)")
  for st in settings:
    if st.name == "batch 1":
      forwards = st.nfe.sum() + len(st.prompts)  # + each prompt's prefill
      per = np.median(st.times["t3d_jax"]) / forwards
      print(f"  batch 1, s={st.s}: {per * 1e3:.2f} ms per forward = "
            f"{per / (wbytes / bw):.2f}x the weight-stream limit, {per / one:.2f}x the "
            f"matmul floor")
  dcfg = base.replace(denoising_steps=a.peer_steps[0])
  for batch in a.mfu_batches:
    prompts = _prompts(rs, batch, a.peer_prompt, a.vocab, equal=False)
    ids, lens = pad_prompts(prompts, batch, max(len(p) for p in prompts))
    dec = T3D(make, cfg, dcfg, params, [(ids, lens)])
    runs = [dec() for _ in range(a.repeats)]
    sec = float(np.median([r[2] for r in runs]))
    flops = decode_flops(cfg, dcfg, lens, runs[0][1])
    print(f"  decode MFU, batch {batch}, s={dcfg.denoising_steps}: {flops / sec / 1e9:.0f} "
          f"GFLOP/s = {flops / sec / peak:.0%} of the matmul peak "
          f"({batch * dcfg.max_new_tokens / sec:.0f} tok/s)")
