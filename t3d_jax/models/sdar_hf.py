"""The SDAR family's Hugging Face side: config.json <-> SDARConfig, and one table, HF tensor
name <-> param path, used in both directions (the family entry, models/family.py, holds
both; convert/ reads and writes HF dirs through it).

Each row names a transformers (Qwen3 / SDAR) tensor, the param path in our tree, and a
pair of exact (lossless) reshapes: ``to_param`` turns the HF tensor into our layout and
``to_hf`` turns it back. Per-layer rows carry ``{i}`` in the HF name and live in the
stacked ``layers`` subtree with a leading layer axis.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from t3d_jax.models.sdar import SDARConfig

Fn = Callable[[np.ndarray, SDARConfig], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Row:
  hf: str                      # HF name, "{i}" = layer index
  path: tuple[str, ...]        # path in the params tree
  to_param: Fn                 # HF tensor -> param (one layer's slice for per-layer rows)
  to_hf: Fn                    # inverse
  hf_shape: Callable[[SDARConfig], tuple[int, ...]]
  when: Callable[[SDARConfig], bool] = lambda c: True

  @property
  def per_layer(self) -> bool:
    return "{i}" in self.hf


def _same(x, c):
  return x


def _t(x, c):
  return np.ascontiguousarray(x.T)


def _in_heads(heads: Callable[[SDARConfig], int]) -> tuple[Fn, Fn]:
  """Linear [heads*hd, H] <-> kernel [H, heads, hd]."""
  return (lambda x, c: np.ascontiguousarray(x.T).reshape(c.hidden_size, heads(c), c.head_dim),
          lambda x, c: np.ascontiguousarray(x.reshape(c.hidden_size, -1).T))


def _bias_heads(heads: Callable[[SDARConfig], int]) -> tuple[Fn, Fn]:
  return (lambda x, c: x.reshape(heads(c), c.head_dim), lambda x, c: x.reshape(-1))


_o = (lambda x, c: np.ascontiguousarray(x.T).reshape(c.num_heads, c.head_dim, c.hidden_size),
      lambda x, c: np.ascontiguousarray(x.reshape(-1, c.hidden_size).T))

_NH = lambda c: c.num_heads      # noqa: E731
_NKV = lambda c: c.num_kv_heads  # noqa: E731
_bias = lambda c: c.attention_bias  # noqa: E731
_L = "model.layers.{i}."
_A = ("layers", "attn")
_M = ("layers", "mlp")

ROWS: tuple[Row, ...] = (
    Row("model.embed_tokens.weight", ("embedding",), _same, _same,
        lambda c: (c.vocab_size, c.hidden_size)),
    Row(_L + "input_layernorm.weight", ("layers", "input_norm", "scale"), _same, _same,
        lambda c: (c.hidden_size,)),
    Row(_L + "self_attn.q_proj.weight", _A + ("q_kernel",), *_in_heads(_NH),
        lambda c: (c.num_heads * c.head_dim, c.hidden_size)),
    Row(_L + "self_attn.q_proj.bias", _A + ("q_bias",), *_bias_heads(_NH),
        lambda c: (c.num_heads * c.head_dim,), _bias),
    Row(_L + "self_attn.k_proj.weight", _A + ("k_kernel",), *_in_heads(_NKV),
        lambda c: (c.num_kv_heads * c.head_dim, c.hidden_size)),
    Row(_L + "self_attn.k_proj.bias", _A + ("k_bias",), *_bias_heads(_NKV),
        lambda c: (c.num_kv_heads * c.head_dim,), _bias),
    Row(_L + "self_attn.v_proj.weight", _A + ("v_kernel",), *_in_heads(_NKV),
        lambda c: (c.num_kv_heads * c.head_dim, c.hidden_size)),
    Row(_L + "self_attn.v_proj.bias", _A + ("v_bias",), *_bias_heads(_NKV),
        lambda c: (c.num_kv_heads * c.head_dim,), _bias),
    Row(_L + "self_attn.o_proj.weight", _A + ("o_kernel",), *_o,
        lambda c: (c.hidden_size, c.num_heads * c.head_dim)),
    Row(_L + "self_attn.o_proj.bias", _A + ("o_bias",), _same, _same,
        lambda c: (c.hidden_size,), _bias),
    Row(_L + "self_attn.q_norm.weight", _A + ("q_norm", "scale"), _same, _same,
        lambda c: (c.head_dim,)),
    Row(_L + "self_attn.k_norm.weight", _A + ("k_norm", "scale"), _same, _same,
        lambda c: (c.head_dim,)),
    Row(_L + "post_attention_layernorm.weight", ("layers", "post_attn_norm", "scale"), _same,
        _same, lambda c: (c.hidden_size,)),
    Row(_L + "mlp.gate_proj.weight", _M + ("gate_kernel",), _t, _t,
        lambda c: (c.intermediate_size, c.hidden_size)),
    Row(_L + "mlp.up_proj.weight", _M + ("up_kernel",), _t, _t,
        lambda c: (c.intermediate_size, c.hidden_size)),
    Row(_L + "mlp.down_proj.weight", _M + ("down_kernel",), _t, _t,
        lambda c: (c.hidden_size, c.intermediate_size)),
    Row("model.norm.weight", ("final_norm", "scale"), _same, _same, lambda c: (c.hidden_size,)),
    Row("lm_head.weight", ("lm_head",), _t, _t, lambda c: (c.vocab_size, c.hidden_size),
        lambda c: not c.tie_word_embeddings),
)


# Qwen3's table without the q/k norms and the output bias: the LLaMA / Qwen2 layers of
# LLaDA and Dream (models/llada.py renames it, models/dream.py takes it as it is)
ROWS_NO_QK_NORM: tuple[Row, ...] = tuple(
    r for r in ROWS if not r.hf.endswith(("q_norm.weight", "k_norm.weight", "o_proj.bias")))


def order_entries(rows: tuple[Row, ...], cfg,
                  hf_order: bool) -> list[tuple[str, Row, int | None]]:
  """(hf_name, row, layer index or None) for every tensor of ``cfg`` in a family's table
  ``rows``: grouped by row (each per-layer row over all layers: how params are stacked),
  or with ``hf_order`` in transformers' natural order (the rows before the first
  per-layer row, layer 0 (all its rows), layer 1, ..., the rows after)."""
  out = []
  for row in rows:
    if not row.when(cfg):
      continue
    if row.per_layer:
      out += [(row.hf.format(i=i), row, i) for i in range(cfg.num_layers)]
    else:
      out.append((row.hf, row, None))
  if not hf_order:
    return out
  first_layer_row = next(k for k, r in enumerate(rows) if r.per_layer)

  def key(e):
    _, row, i = e
    k = rows.index(row)
    return (1, i, k) if i is not None else (0 if k < first_layer_row else 2, 0, k)
  return sorted(out, key=key)


def entries(cfg: SDARConfig) -> list[tuple[str, Row, int | None]]:
  """(hf_name, row, layer index or None) for every tensor of ``cfg``, grouped by row."""
  return order_entries(ROWS, cfg, hf_order=False)


def hf_order_entries(cfg: SDARConfig) -> list[tuple[str, Row, int | None]]:
  """Entries in transformers' natural order: embed, layer 0 (all), layer 1, ..., norm, head."""
  return order_entries(ROWS, cfg, hf_order=True)


def _int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def check_types(hf: dict[str, Any], sizes=(), ids=(), numbers_=(), bools=(), dicts=()) -> None:
  """ValueError naming the first of these config.json keys, where present and not null,
  that has the wrong JSON type: ``bool("false")`` would read as true, a layer count of
  2.5 or "2" as no count at all, and 0 heads divide by zero."""
  for keys, ok, what in (
      (sizes, lambda v: _int(v) and v > 0, "a positive integer"),
      (ids, lambda v: _int(v) and v >= 0, "an integer >= 0"),
      (numbers_, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
      (bools, lambda v: isinstance(v, bool), "true or false"),
      (dicts, lambda v: isinstance(v, dict), "an object")):
    for key in keys:
      if hf.get(key) is not None and not ok(hf[key]):
        raise ValueError(f"{key}={hf[key]!r} must be {what}")


QWEN_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "head_dim")


def config_from_hf(hf: dict[str, Any], **overrides) -> SDARConfig:
  """SDARConfig of a transformers config.json dict (Qwen3 or SDAR); the inverse of
  :func:`hf_config_from`."""
  return SDARConfig(**{**qwen_fields(hf), **overrides})


def qwen_fields(hf: dict[str, Any]) -> dict[str, Any]:
  """The config fields of a Qwen-style config.json (Qwen2 / Qwen3 keys)."""
  check_types(hf, sizes=QWEN_SIZES, ids=("mask_token_id",),
              numbers_=("rope_theta", "rms_norm_eps"),
              bools=("tie_word_embeddings", "attention_bias", "use_sliding_window"),
              dicts=("rope_parameters", "rope_scaling"))
  rope = hf.get("rope_parameters") or {}
  scaling = hf.get("rope_scaling") or {}
  rope_type = rope.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
  if rope_type not in (None, "default"):
    raise ValueError(f"rope type {rope_type!r} is not supported (only default RoPE)")
  theta = hf.get("rope_theta", rope.get("rope_theta", 10_000.0))
  nh = hf["num_attention_heads"]
  kw = dict(
      vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
      intermediate_size=hf["intermediate_size"], num_layers=hf["num_hidden_layers"],
      num_heads=nh, num_kv_heads=hf.get("num_key_value_heads") or nh,
      head_dim=hf.get("head_dim") or hf["hidden_size"] // nh,
      rope_theta=float(theta), rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
      attention_bias=bool(hf.get("attention_bias", False)))
  return kw


def hf_config_from(cfg: SDARConfig) -> dict[str, Any]:
  """A Qwen3 config.json for params that came without one (e.g. trained from scratch)."""
  return {
      "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
      "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim, "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.rms_norm_eps,
      "tie_word_embeddings": cfg.tie_word_embeddings, "attention_bias": cfg.attention_bias,
      "hidden_act": "silu", "max_position_embeddings": 32768, "torch_dtype": cfg.param_dtype,
  }
