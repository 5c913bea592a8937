"""The peer benchmark: the SDAR generate.py port agrees with t3d_jax's decoder where the
release's semantics allow, the FLOP model agrees with XLA's count, and the CLI runs."""
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t3d_jax.bench import limits, peer, sdar_port
from t3d_jax.models import sdar
from t3d_jax.sampling import DecodeConfig, generate

CFG = sdar.SDARConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=16)
MASK = CFG.vocab_size - 1


@pytest.fixture(scope="module")
def setup():
  params = sdar.init_params(CFG, jax.random.key(3))
  return params, sdar_port.torch_model(params, CFG)


def _both(setup, plen, steps, strategy, threshold=0.9):
  params, model = setup
  ids = np.random.RandomState(plen * 10 + steps).randint(0, MASK, size=(3, plen))
  dcfg = DecodeConfig(block_size=4, denoising_steps=steps, max_new_tokens=20, mask_id=MASK,
                      strategy=strategy, threshold=threshold)
  ours = generate(params, CFG, ids.astype(np.int32), np.full(3, plen, np.int32),
                  jax.random.key(0), dcfg)
  port, forwards, overwrote = sdar_port.generate(model, ids, MASK, 20, 4, steps, strategy,
                                                 threshold)
  return np.asarray(ours["ids"]), np.asarray(ours["nfe"]), port, forwards, overwrote


@pytest.mark.parametrize("plen,steps,strategy", [
    (12, 4, "low_confidence_static"), (13, 4, "low_confidence_static"),
    (12, 1, "low_confidence_static"), (14, 2, "sequential"),
    (16, 2, "low_confidence_dynamic")])
def test_port_equals_t3d_jax_where_the_release_does_not_overwrite(setup, plen, steps, strategy):
  ours, nfe, port, forwards, overwrote = _both(setup, plen, steps, strategy, threshold=0.02)
  assert not overwrote.any()
  np.testing.assert_array_equal(ours, port)
  # the port's forwards: prefill + per block its denoising forwards + one commit forward
  blocks = -(-(plen + 20) // 4) - plen // 4
  if strategy != "low_confidence_dynamic":
    assert forwards == 1 + nfe[0] + blocks


def test_port_overwrites_the_prompt_tail_at_one_step(setup):
  # 13 % 4 = 1 prompt token in the first block: the release reveals 4 positions at s=1
  ours, _, port, _, overwrote = _both(setup, 13, 1, "low_confidence_static")
  assert overwrote.all()
  # only the first block can differ at its own positions; what follows depends on it
  assert (ours != port).any()


def test_tie_gap_is_the_top2_logit_gap_of_the_blocks_only_step(setup):
  """tie_gap re-derived with transformers: [prompt | the port's tokens before the block |
  masks] under the staircase mask; the gap of the two best logits at the first token the
  two outputs differ. Only at one step per block and outside prompt-tail blocks."""
  from hf_models import torch_logits
  from t3d_jax import masks
  params, model = setup
  prompt = np.random.RandomState(5).randint(0, MASK, size=12)
  dcfg = DecodeConfig(block_size=4, denoising_steps=1, max_new_tokens=20, mask_id=MASK)
  port, _, _ = sdar_port.generate(model, prompt[None], MASK, 20, 4, 1)
  other = port[0].copy()
  other[9] = (other[9] + 1) % MASK                        # first difference: token 9
  gap = peer.tie_gap(params, CFG, dcfg, prompt, port[0], other)
  seq = np.concatenate([prompt, port[0, :8], np.full(4, MASK)])[None]  # block of token 9
  n = seq.shape[1]
  logits = torch_logits(model, seq, np.asarray(masks.staircase_mask(n, 4))[None],
                        np.arange(n)[None])[0, 12 + 9]
  top = np.sort(logits)[-2:]
  assert gap == pytest.approx(top[1] - top[0], abs=1e-5)
  assert gap > 0
  assert peer.tie_gap(params, CFG, dcfg.replace(denoising_steps=2), prompt, port[0],
                      other) is None
  tail = np.concatenate([prompt, prompt[:1]])             # 13 tokens: block 0 holds one
  first = other.copy()
  first[0] = (first[0] + 1) % MASK
  assert peer.tie_gap(params, CFG, dcfg, tail, port[0], first) is None


def test_roofline_ceiling_of_a_setting():
  """The ceiling column: the port's time over t3d_jax's roofline, per decoding call the
  larger of FLOPs / peak and (max NFE + prefill) weight reads / bandwidth."""
  dcfg = DecodeConfig(block_size=4, denoising_steps=4, max_new_tokens=8, mask_id=MASK)
  st = object.__new__(peer.Setting)
  st.cfg, st.dcfg, st.s, st.name = CFG, dcfg, 4, "x"
  st.prompts = [np.zeros(12, np.int32), np.zeros(9, np.int32)]
  st.nfe = np.array([8, 12])
  st.port_ids = st.t3d_ids = np.zeros((2, 8), np.int32)
  st.overwrote = np.zeros(2, bool)
  st.times = {"port": [2.0, 3.0], "t3d_jax": [1.0, 1.0]}
  flops = [peer.decode_flops(CFG, dcfg, [12], [8]), peer.decode_flops(CFG, dcfg, [9], [12])]
  both = peer.decode_flops(CFG, dcfg, [12, 9], [8, 12])
  bw, peak, wbytes = 1e9, 1e9, 1e6
  st.per_prompt = True   # two calls of one row: 9 and 13 forwards
  want = max(flops[0] / peak, 9e-3) + max(flops[1] / peak, 13e-3)
  assert st.roofline_seconds(bw, peak, wbytes) == pytest.approx(want)
  st.per_prompt = False  # one call: the rows ride together for 13 forwards
  assert st.roofline_seconds(bw, peak, wbytes) == pytest.approx(max(both / peak, 13e-3))
  floor = lambda rows, head: rows + head / 10  # noqa: E731  (seconds, a shape's signature)
  cells, fine = st.row(bw, peak, wbytes, floor)
  assert fine and cells[-1] == "all"
  assert cells[-3] == f"{2.5 / max(both / peak, 13e-3):.2f}x"   # median port time / roofline
  assert cells[-2] == f"{2.5 / st.kernel_seconds(floor, peak):.2f}x"


def test_kernel_seconds_count_each_forward_at_its_shape():
  """One call of prompts 12 and 9 (padded to 12), 8 new tokens, b = 4: blocks
  (12+8)/4 - 3 = 2 and ceil(17/4) - 2 = 3; the call runs 3 blocks and its rows' max NFE."""
  dcfg = DecodeConfig(block_size=4, denoising_steps=4, max_new_tokens=8, mask_id=MASK)
  st = object.__new__(peer.Setting)
  st.cfg, st.dcfg, st.per_prompt = CFG, dcfg, False
  st.prompts = [np.zeros(12, np.int32), np.zeros(9, np.int32)]
  st.nfe = np.array([8, 12])
  shapes = []
  floor = lambda rows, head: shapes.append((rows, head)) or 1.0  # noqa: E731
  free = float("inf")  # attention at an infinite peak: the weight matmuls alone
  # fused: prefill [2 x 12] no head, 2 fused (2 rows x 8, head on 8), 12 - 2 plain
  assert st.kernel_seconds(floor, free) == 1 + 2 + 10
  assert shapes == [(24, 0), (16, 8), (8, 8)]
  # plus the attention's FLOPs (both rows) at the peak
  attention = peer.decode_flops(CFG, dcfg, [12, 9], [8, 12], limits.attention_flops)
  assert attention > 0
  assert st.kernel_seconds(floor, 1e9) == pytest.approx(13 + attention / 1e9)
  st.dcfg, shapes[:] = dcfg.replace(commit_mode="separate"), []
  assert st.kernel_seconds(floor, free) == 1 + 2 + 10 and shapes == [(24, 0), (8, 0), (8, 8)]
  st.per_prompt, shapes[:] = True, []      # a call per row, each padded to 12
  assert st.kernel_seconds(floor, free) == (1 + 1 + 7) + (1 + 2 + 10)
  assert shapes[:3] == [(12, 0), (4, 0), (4, 4)]


@pytest.mark.parametrize("head", [True, False])
def test_attention_flops_are_the_context_part_of_forward_flops(head):
  for tokens, context in [(4, 12), (8, 100.5)]:
    part = limits.forward_flops(CFG, tokens, context, head) - limits.forward_flops(
        CFG, tokens, 0, head)
    assert limits.attention_flops(CFG, tokens, context, head) == pytest.approx(part)


def test_forward_flops_match_xla_count():
  cfg = CFG.replace(num_layers=1)  # XLA counts a scanned layer's body once
  params = sdar.init_params(cfg, jax.random.key(0))
  tokens = 32
  ids = jnp.zeros((1, tokens), jnp.int32)
  mask = jnp.ones((1, tokens, tokens), bool)
  pos = jnp.arange(tokens)[None]
  cost = jax.jit(lambda p: sdar.forward(p, cfg, ids, mask, pos)).lower(params).compile()
  analysed = cost.cost_analysis()
  xla = (analysed[0] if isinstance(analysed, list) else analysed)["flops"]
  ours = limits.forward_flops(cfg, tokens, tokens)
  # XLA adds the elementwise work (norms, rope, softmax, silu) to the matmuls
  assert ours <= xla <= 1.3 * ours, (ours, xla)


def test_weight_bytes_skip_only_an_untied_embedding():
  params = sdar.init_params(CFG, jax.random.key(0))
  total = sum(x.size * 4 for x in jax.tree.leaves(params))
  assert limits.weight_bytes(params, CFG) == total - params["embedding"].size * 4
  tied = CFG.replace(tie_word_embeddings=True)
  tparams = sdar.init_params(tied, jax.random.key(0))
  assert limits.weight_bytes(tparams, tied) == sum(x.size * 4 for x in jax.tree.leaves(tparams))


def test_forward_flops_without_head_match_xla_count_of_a_kv_only_forward():
  """A forward whose logits are dropped (prefill, commit) costs no LM head and, of the last
  layer, only the key/value projections: XLA removes the rest."""
  params = sdar.unstack_layers(sdar.init_params(CFG, jax.random.key(0)))  # unrolled: XLA
  tokens, cache = 8, sdar.KVCache.zeros(CFG, 1, 16)                       # counts each layer
  ids, pos = jnp.zeros((1, tokens), jnp.int32), jnp.arange(tokens)[None]
  mask = jnp.ones((1, tokens, 16 + tokens), bool)

  def xla_flops(keep_logits):
    def f(p):
      logits, kv = sdar.forward_with_cache(p, CFG, ids, mask, pos, cache)
      return (logits, kv) if keep_logits else kv
    analysed = jax.jit(f).lower(params).compile().cost_analysis()
    return (analysed[0] if isinstance(analysed, list) else analysed)["flops"]

  for head in (True, False):
    ours, xla = limits.forward_flops(CFG, tokens, 16 + tokens, head=head), xla_flops(head)
    # XLA adds the elementwise work (norms, rope, softmax, silu) to the matmuls
    assert ours <= xla <= 1.3 * ours, (head, ours, xla)


def test_decode_flops_count_prefill_denoise_and_commits():
  fused = DecodeConfig(block_size=4, denoising_steps=4, max_new_tokens=8, mask_id=MASK)
  # plen 8: prefill 8 tokens, 2 generated blocks of 4 denoising forwards, 1 commit (not
  # the last block's); prefill and commit without the head
  want = (limits.forward_flops(CFG, 8, 4, head=False) + 4 * limits.forward_flops(CFG, 4, 12)
          + limits.forward_flops(CFG, 4, 12, head=False) + 4 * limits.forward_flops(CFG, 4, 16))
  assert peer.decode_flops(CFG, fused, [8], [8]) == pytest.approx(want)
  # 'separate' counts its commit forward in nfe: 9 forwards are the same work
  separate = fused.replace(commit_mode="separate")
  assert peer.decode_flops(CFG, separate, [8], [9]) == pytest.approx(want)


def test_peer_cli_runs_and_compares_outputs():
  tiny = ["--vocab", "300", "--hidden", "64", "--intermediate", "96", "--layers", "2",
          "--heads", "4", "--kv-heads", "2", "--head-dim", "16"]
  r = subprocess.run([sys.executable, "-m", "t3d_jax.bench", "sampler", "--peer", "sdar", *tiny,
                      "--max-new", "8", "--repeats", "1", "--peer-steps", "1",
                      "--peer-prompt", "12", "--peer-single", "2", "--peer-batch", "2",
                      "--mfu-batches", "2"], capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  table = [line for line in r.stdout.splitlines() if line.count(" | ") == 7]
  assert len(table) == 2 + 3                    # header, rule, three settings at s=1
  assert all(re.fullmatch(r"\d+\.\d\dx", row.split(" | ")[6]) for row in table[2:])  # kernels
  assert "UNEXPLAINED" not in r.stdout
  assert "weight-stream limit" in r.stdout and "decode MFU, batch 2" in r.stdout


def test_sampler_bench_cli_unrolled_and_scanned_rows():
  """``bench sampler --unroll 1,0``: both layer loops timed side by side, each equal to the
  naive recompute decoder token for token."""
  tiny = ["--vocab", "300", "--hidden", "64", "--intermediate", "96", "--layers", "2",
          "--heads", "4", "--kv-heads", "2", "--head-dim", "16"]
  r = subprocess.run([sys.executable, "-m", "t3d_jax.bench", "sampler", *tiny, "--max-new", "8",
                      "--batch", "3", "--steps", "2", "--naive-steps", "2", "--modes", "fused",
                      "--unroll", "1,0", "--repeats", "2"], capture_output=True, text=True,
                     timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  rows = [line.split(" | ") for line in r.stdout.splitlines() if line.count(" | ") == 9]
  names = [row[0] for row in rows[2:]]
  assert names == ["cached/fused", "cached/fused (scanned layers)", "naive"]
  assert all(row[-1] == "yes" for row in rows[2:])
  assert rows[4][7] == "-" and all(re.fullmatch(r"\d+%", row[7]) for row in rows[2:4])  # MFU
