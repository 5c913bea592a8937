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


# LLaDA's tensor names (OLMo layout) for a transformers LLaMA's: the networks are the same
_LLADA_NAMES = (("model.embed_tokens.", "model.transformer.wte."),
                ("model.norm.", "model.transformer.ln_f."),
                ("lm_head.", "model.transformer.ff_out."),
                ("model.layers.", "model.transformer.blocks."),
                ("self_attn.o_proj.", "attn_out."), ("self_attn.", ""),
                ("input_layernorm.", "attn_norm."), ("post_attention_layernorm.", "ff_norm."),
                ("mlp.gate_proj.", "ff_proj."), ("mlp.up_proj.", "up_proj."),
                ("mlp.down_proj.", "ff_out."))
REMOTE_CODE = {"AutoConfig": "configuration_x.XConfig", "AutoModel": "modeling_x.XModel"}


def _randomise(model, dtype):
  with torch.no_grad():  # default init leaves norms at 1 and biases at 0: randomise them
    for name, p in model.named_parameters():
      if "norm" in name or "bias" in name:
        p.add_(0.1 * torch.randn_like(p))
  return model.to(dtype).eval()


def _save(out_dir, tensors: dict, config: dict) -> None:
  from safetensors.torch import save_file
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"),
            metadata={"format": "pt"})
  (out / "config.json").write_text(json.dumps(config, indent=2))


def make_llada(out_dir, *, seed=0, dtype=torch.float32, mask_token_id=298, tied=False,
               **overrides):
  """A random LLaDA checkpoint in its published layout (OLMo config keys, LLaDA tensor
  names, remote code in auto_map) and the transformers LlamaForCausalLM with the same
  weights (what a LLaDA block computes, attention made bidirectional by the caller's
  mask)."""
  torch.manual_seed(seed)
  kw = dict(TINY, rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=tied)
  kw.pop("head_dim")
  kw.update(overrides)
  model = _randomise(transformers.LlamaForCausalLM(transformers.LlamaConfig(**kw)), dtype)
  tensors = {}
  for name, t in model.state_dict().items():
    if tied and name == "lm_head.weight":
      continue
    for a, b in _LLADA_NAMES:
      name = name.replace(a, b)
    tensors[name] = t
  c = model.config
  config = dict(
      architectures=["LLaDAModelLM"], auto_map=REMOTE_CODE, model_type="llada",
      activation_type="silu", alibi=False, block_type="llama", d_model=c.hidden_size,
      n_heads=c.num_attention_heads, n_kv_heads=c.num_key_value_heads,
      n_layers=c.num_hidden_layers, mlp_hidden_size=c.intermediate_size, mlp_ratio=4,
      vocab_size=c.vocab_size, embedding_size=c.vocab_size, include_bias=False,
      include_qkv_bias=False, layer_norm_type="rms", rms_norm_eps=c.rms_norm_eps,
      rope=True, rope_full_precision=True, rope_theta=kw["rope_theta"],
      scale_logits=False, weight_tying=tied, mask_token_id=mask_token_id,
      eos_token_id=1, pad_token_id=1, max_sequence_length=512,
      torch_dtype=str(dtype).replace("torch.", ""), use_cache=False)
  _save(out_dir, tensors, config)
  return model


def make_dream(out_dir, *, seed=0, dtype=torch.float32, mask_token_id=298, **overrides):
  """A random Dream checkpoint (Qwen2 tensors, config.json with model_type Dream, remote
  code in auto_map) and the transformers Qwen2ForCausalLM with the same weights."""
  torch.manual_seed(seed)
  kw = dict(TINY, rope_theta=1000000.0, tie_word_embeddings=False)
  kw.pop("head_dim")
  kw.update(overrides)
  model = _randomise(transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**kw)), dtype)
  c = model.config
  config = dict(
      architectures=["DreamModel"], auto_map=REMOTE_CODE, model_type="Dream",
      hidden_act="silu", hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
      num_attention_heads=c.num_attention_heads, num_key_value_heads=c.num_key_value_heads,
      num_hidden_layers=c.num_hidden_layers, vocab_size=c.vocab_size,
      rms_norm_eps=c.rms_norm_eps, rope_theta=kw["rope_theta"], rope_scaling=None,
      tie_word_embeddings=False, use_sliding_window=False, sliding_window=None,
      mask_token_id=mask_token_id, bos_token_id=1, eos_token_id=1, pad_token_id=1,
      max_position_embeddings=512, torch_dtype=str(dtype).replace("torch.", ""))
  _save(out_dir, dict(model.state_dict()), config)
  return model


def family_model_dir(root, family: str) -> Path:
  """root/hf (a random LLaDA or Dream checkpoint with the tiny test tokenizer, whose
  300 ids fit its vocabulary) and root/model (converted); built once per root."""
  import shutil
  from t3d_jax.convert import convert_hf_to_model_dir
  from t3d_jax.data.tokenizer_build import gsm8k_texts, train_tiny_bpe
  root = Path(root)
  if (root / "model").is_dir():
    return root / "model"
  {"llada": make_llada, "dream": make_dream}[family](root / "hf")
  train_tiny_bpe(root / "tokenizer", texts=gsm8k_texts(limit=200), vocab_size=300)
  for f in (root / "tokenizer").iterdir():
    shutil.copy2(f, root / "hf" / f.name)
  convert_hf_to_model_dir(root / "hf", root / "model")
  return root / "model"
