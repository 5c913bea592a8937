"""The Dream family (Dream-org/Dream-v0-Base / -Instruct-7B and the Dream-architecture
coders DiffuCoder-7B, Dream-Coder-7B): Qwen2 layers (q/k/v biases, no q/k norm, untied
head) with bidirectional attention; ``model_type`` Dream and the Qwen2 tensor names.
Its published generation reads the prediction for position i from the output at i - 1
(``Family.prediction_offset`` = 1: the output at i predicts token i + 1), like an
autoregressive LM; the network itself (:mod:`t3d_jax.models.sdar` with the flags of
:class:`DreamConfig`) returns the raw outputs.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from t3d_jax.models import sdar_hf
from t3d_jax.models.sdar import SDARConfig
from t3d_jax.models.sdar_hf import Row, order_entries


@dataclasses.dataclass(frozen=True)
class DreamConfig(SDARConfig):
  """Qwen2 layers: no q/k norm, q/k/v biased (``attention_bias``), o not."""
  QK_NORM: ClassVar[bool] = False
  O_BIAS: ClassVar[bool] = False


ROWS: tuple[Row, ...] = sdar_hf.ROWS_NO_QK_NORM  # Qwen2's names


def entries(cfg: DreamConfig) -> list[tuple[str, Row, int | None]]:
  return order_entries(ROWS, cfg, hf_order=False)


def hf_order_entries(cfg: DreamConfig) -> list[tuple[str, Row, int | None]]:
  return order_entries(ROWS, cfg, hf_order=True)


def config_from_hf(hf: dict[str, Any], **overrides) -> DreamConfig:
  """DreamConfig of a Dream config.json (Qwen2 keys; q/k/v always biased)."""
  for key in ("use_sliding_window",):
    if hf.get(key):
      raise ValueError(f"{key}=true is not supported for Dream")
  kw = dict(sdar_hf.qwen_fields(hf), attention_bias=True,
            mask_token_id=hf.get("mask_token_id"))
  return DreamConfig(**{**kw, **overrides})


def hf_config_from(cfg: DreamConfig) -> dict[str, Any]:
  """A Dream config.json for params that came without one. It has no ``auto_map``:
  transformers needs Dream's remote code (or Qwen2ForCausalLM with a bidirectional
  mask) to load it."""
  if cfg.num_heads * cfg.head_dim != cfg.hidden_size:
    raise ValueError(f"Dream's config has no head_dim: num_attention_heads={cfg.num_heads} "
                     f"x head_dim={cfg.head_dim} must equal hidden_size={cfg.hidden_size}")
  out = {k: v for k, v in sdar_hf.hf_config_from(cfg).items()
         if k not in ("head_dim", "attention_bias")}
  out.update(architectures=["DreamModel"], model_type="Dream", use_sliding_window=False)
  if cfg.mask_token_id is not None:
    out["mask_token_id"] = cfg.mask_token_id
  return out
