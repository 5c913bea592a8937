"""Tiny random transformers Qwen3 checkpoints, built offline inside the tests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import transformers

TINY = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
            max_position_embeddings=512)


def make_qwen3(out_dir, *, tied=False, theta=12345.0, bias=False, seed=0, layers=2,
               dtype=torch.float32, max_shard_size=None, model_type=None, **overrides):
  """Save a random Qwen3ForCausalLM into out_dir and return the torch model (eval mode)."""
  torch.manual_seed(seed)
  kw = dict(TINY, num_hidden_layers=layers, tie_word_embeddings=tied, attention_bias=bias,
            rope_theta=theta)
  kw.update(overrides)
  cfg = transformers.Qwen3Config(**kw)
  model = transformers.Qwen3ForCausalLM(cfg)
  with torch.no_grad():  # default init leaves norms at 1 and biases at 0: randomise them
    for name, p in model.named_parameters():
      if "norm" in name or "bias" in name:
        p.add_(0.1 * torch.randn_like(p))
  model = model.to(dtype).eval()
  save_kw = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
  model.save_pretrained(out_dir, **save_kw)
  if model_type:  # e.g. pretend to be an SDAR checkpoint
    path = Path(out_dir) / "config.json"
    c = json.loads(path.read_text())
    c["model_type"] = model_type
    path.write_text(json.dumps(c))
  return model


def torch_logits(model, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
  """transformers logits with a 4D bool mask (sdpa: True = attend)."""
  model.config._attn_implementation = "sdpa"
  with torch.no_grad():
    out = model(input_ids=torch.tensor(np.array(ids), dtype=torch.long),
                attention_mask=torch.tensor(np.array(mask, bool))[:, None],
                position_ids=torch.tensor(np.array(positions), dtype=torch.long))
  return out.logits.float().numpy()
