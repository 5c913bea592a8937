"""The machine's two physical limits, and a model's demand on them.

Decoding a block is bound by reading the weights at small batch (each forward streams
every weight once) and by matmul throughput at large batch. ``stream_bandwidth`` and
``matmul_peak`` measure the two on the device at hand; ``weight_bytes`` and
``forward_flops`` say what one forward of the model needs of each (``attention_flops``:
its attention part). ``matmul_floor`` times the model's weight matmuls alone at a
forward's shape: what the device's matmul kernels can do there, whatever the rest of the
forward costs (at a few rows they run below both roofs: neither bandwidth- nor
compute-bound).
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from t3d_jax.models.sdar import SDARConfig, unstack_layers


def _best_seconds(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile + warm
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t0)
  return best


def stream_bandwidth(nbytes: int = 256 * 2**20, repeats: int = 10) -> float:
  """Bytes/s of a jitted full reduction over an fp32 array of ``nbytes`` (well beyond the
  caches): the rate at which this device can stream weights from memory."""
  x = jnp.ones((nbytes // 4,), jnp.float32)
  return nbytes / _best_seconds(jax.jit(jnp.sum), x, repeats=repeats)


def matmul_peak(n: int | None = None, dtype: str = "float32", repeats: int = 5) -> float:
  """FLOP/s of a jitted [n, n] @ [n, n] matmul (2 n^3 FLOPs): the compute roof. ``n``
  defaults to 2048 on CPU and 8192 on an accelerator (where 2048 takes microseconds, so
  dispatch would dominate)."""
  n = n or (2048 if jax.default_backend() == "cpu" else 8192)
  a = jnp.ones((n, n), dtype)
  return 2 * n ** 3 / _best_seconds(jax.jit(jnp.matmul), a, a, repeats=repeats)


def weight_bytes(params, cfg: SDARConfig) -> int:
  """Bytes one forward must read: every parameter, except that an untied input embedding
  is gathered row by row (only the rows of the tokens in the batch are read)."""
  total = sum(int(x.size) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(params))
  if not cfg.tie_word_embeddings:
    emb = params["embedding"]
    total -= int(emb.size) * np.dtype(emb.dtype).itemsize
  return total


def forward_flops(cfg: SDARConfig, tokens: int, context: float, head: bool = True) -> float:
  """Model FLOPs of one forward of ``tokens`` query tokens attending to ``context`` keys
  each: 2 per multiply-add of the projections, MLP and LM head, plus QK^T and AV.
  ``head=False``: a forward run for its keys and values alone (prefill, commit), of which
  XLA computes no LM head and, of the last layer, only the key and value projections."""
  h, q_dim, kv_dim = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
  kv = 2 * tokens * 2 * h * kv_dim
  layer = kv + 2 * tokens * (2 * h * q_dim + 3 * h * cfg.intermediate_size)
  attention = attention_flops(cfg, tokens, context, head)
  if not head:
    return (cfg.num_layers - 1) * layer + kv + attention
  return cfg.num_layers * layer + 2 * tokens * h * cfg.vocab_size + attention


def attention_flops(cfg: SDARConfig, tokens: int, context: float, head: bool = True) -> float:
  """The QK^T and AV part of :func:`forward_flops` (``head=False``: the last layer has
  none)."""
  layers = cfg.num_layers - (not head)
  return layers * 2 * 2 * tokens * context * cfg.num_heads * cfg.head_dim


def matmul_floor(params, cfg: SDARConfig, rows: int, head_rows: int | None = None,
                 repeats: int = 10) -> float:
  """Seconds of one forward's weight matmuls alone at ``rows`` query tokens (batch x
  block): every projection and the MLP, chained layer to layer against the model's own
  (per-layer) weights, then the LM head on ``head_rows`` of them (default all). With
  ``head_rows=0`` (a forward run for its keys and values: prefill, commit) the last layer
  computes only its key and value projections, as XLA does. No attention, norms or
  sampling."""
  head_rows = rows if head_rows is None else head_rows
  p = unstack_layers(params)
  layers = [p[f"layer_{i}"] for i in range(cfg.num_layers)]
  head = p["embedding"].T if cfg.tie_word_embeddings else p["lm_head"]
  dtype = jax.tree.leaves(params)[0].dtype

  def run(x, layers, head):
    side = jnp.zeros((), jnp.float32)
    flat = lambda w: w.reshape(w.shape[0], -1)  # noqa: E731  [in, heads * head_dim]
    for i, lp in enumerate(layers):
      a, m = lp["attn"], lp["mlp"]
      side += (x @ flat(a["k_kernel"])).sum() + (x @ flat(a["v_kernel"])).sum()
      if i == len(layers) - 1 and not head_rows:
        return side
      x = x + (x @ flat(a["q_kernel"])) @ a["o_kernel"].reshape(-1, a["o_kernel"].shape[-1])
      x = x + ((x @ m["gate_kernel"]) * (x @ m["up_kernel"])) @ m["down_kernel"]
    return (x[:head_rows] @ head).sum() + side

  x = jnp.ones((rows, cfg.hidden_size), dtype) * 0.01
  return _best_seconds(jax.jit(run), x, layers, head, repeats=repeats)
