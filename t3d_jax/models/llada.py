"""The LLaDA family (GSAI-ML/LLaDA-8B-Base / -Instruct, LLaDA-1.5): OLMo-style config.json
(``model_type`` llada) and tensor names over LLaMA layers (RMSNorm, RoPE, SwiGLU, no q/k
norm), bidirectional attention over the whole sequence, each position predicting its own
token. The network is the shared decoder of :mod:`t3d_jax.models.sdar` with the flags of
:class:`LLaDAConfig`; this module holds what is LLaDA's own: the config.json translation
both ways and the tensor table (HF name <-> param path, see :mod:`t3d_jax.models.sdar_hf`).

t3d_jax never runs the checkpoint's remote code (``auto_map``): config.json is read here,
and every OLMo option the published checkpoints leave off is refused by name rather than
silently ignored.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from t3d_jax.models.sdar import SDARConfig
from t3d_jax.models.sdar_hf import ROWS_NO_QK_NORM, Row, check_types, order_entries


@dataclasses.dataclass(frozen=True)
class LLaDAConfig(SDARConfig):
  """LLaMA layers: no q/k norm; ``attention_bias`` = config.json ``include_qkv_bias``
  (q, k, v only)."""
  QK_NORM: ClassVar[bool] = False
  O_BIAS: ClassVar[bool] = False


# config.json options of LLaDA's OLMo code that change the network, with the value the
# published checkpoints have; any other value is refused (one line naming the key)
_REQUIRED = dict(block_type="llama", layer_norm_type="rms", activation_type="silu",
                 include_bias=False, scale_logits=False, input_emb_norm=False, alibi=False,
                 rope=True, attention_layer_norm=False, clip_qkv=None,
                 layer_norm_with_affine=True, bias_for_layer_norm=False)

# LLaDA's (OLMo's) name for each part of a Qwen2-named tensor, applied in order
_RENAMES = (("model.embed_tokens.", "model.transformer.wte."),
            ("model.norm.", "model.transformer.ln_f."),
            ("lm_head.", "model.transformer.ff_out."),
            ("model.layers.", "model.transformer.blocks."),
            ("self_attn.o_proj.", "attn_out."), ("self_attn.", ""),
            ("input_layernorm.", "attn_norm."), ("post_attention_layernorm.", "ff_norm."),
            ("mlp.gate_proj.", "ff_proj."), ("mlp.up_proj.", "up_proj."),
            ("mlp.down_proj.", "ff_out."))


def _llada_name(name: str) -> str:
  for a, b in _RENAMES:
    name = name.replace(a, b)
  return name


# the LLaMA layers' table (no q/k norm, q/k/v bias only with include_qkv_bias) in LLaDA's
# names: model.transformer.{wte, blocks.N.{attn_norm, q_proj, k_proj, v_proj, attn_out,
# ff_norm, ff_proj (the gate), up_proj, ff_out}, ln_f, ff_out (the head)}
ROWS: tuple[Row, ...] = tuple(dataclasses.replace(r, hf=_llada_name(r.hf))
                              for r in ROWS_NO_QK_NORM)


def entries(cfg: LLaDAConfig) -> list[tuple[str, Row, int | None]]:
  """(hf name, row, layer or None) per tensor, in the checkpoint's order."""
  return order_entries(ROWS, cfg, hf_order=False)


def hf_order_entries(cfg: LLaDAConfig) -> list:
  return order_entries(ROWS, cfg, hf_order=True)


def config_from_hf(hf: dict[str, Any], **overrides) -> LLaDAConfig:
  """LLaDAConfig of a LLaDA config.json; an option the network does not implement is a
  ValueError naming the key."""
  for key, want in _REQUIRED.items():
    if key in hf and hf[key] != want:
      raise ValueError(f"{key}={hf[key]!r} is not supported for LLaDA "
                       f"(the published checkpoints have {want!r})")
  check_types(hf, sizes=("n_heads", "n_kv_heads", "d_model", "mlp_hidden_size", "mlp_ratio",
                         "n_layers", "embedding_size", "vocab_size"), ids=("mask_token_id",),
              numbers_=("rope_theta", "rms_norm_eps"),
              bools=("multi_query_attention", "weight_tying", "include_qkv_bias"))
  nh = hf["n_heads"]
  nkv = hf.get("n_kv_heads") or (1 if hf.get("multi_query_attention") else nh)
  d = hf["d_model"]
  hidden = hf.get("mlp_hidden_size") or hf.get("mlp_ratio", 4) * d
  kw = dict(
      vocab_size=hf.get("embedding_size") or hf["vocab_size"], hidden_size=d,
      intermediate_size=hidden, num_layers=hf["n_layers"], num_heads=nh, num_kv_heads=nkv,
      head_dim=d // nh, rope_theta=float(hf.get("rope_theta", 10_000.0)),
      rms_norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
      tie_word_embeddings=bool(hf.get("weight_tying", False)),
      attention_bias=bool(hf.get("include_qkv_bias", False)),
      mask_token_id=hf.get("mask_token_id"))
  kw.update(overrides)
  return LLaDAConfig(**kw)


def hf_config_from(cfg: LLaDAConfig) -> dict[str, Any]:
  """A LLaDA config.json for params that came without one (trained from scratch). It
  has no ``auto_map``: transformers needs LLaDA's remote code to load it."""
  if cfg.num_heads * cfg.head_dim != cfg.hidden_size:
    raise ValueError(f"LLaDA's config has no head_dim: n_heads={cfg.num_heads} x "
                     f"head_dim={cfg.head_dim} must equal d_model={cfg.hidden_size}")
  out = dict(_REQUIRED, architectures=["LLaDAModelLM"], model_type="llada",
             d_model=cfg.hidden_size, n_heads=cfg.num_heads, n_kv_heads=cfg.num_kv_heads,
             n_layers=cfg.num_layers, mlp_hidden_size=cfg.intermediate_size,
             vocab_size=cfg.vocab_size, embedding_size=cfg.vocab_size,
             rope_theta=cfg.rope_theta, rms_norm_eps=cfg.rms_norm_eps,
             weight_tying=cfg.tie_word_embeddings, include_qkv_bias=cfg.attention_bias,
             rope_full_precision=True, max_sequence_length=4096,
             torch_dtype=cfg.param_dtype)
  if cfg.mask_token_id is not None:
    out["mask_token_id"] = cfg.mask_token_id
  return out
