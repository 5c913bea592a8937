"""demo mode: the CPU tour of what t3d_jax does today, every stage resumable.

Stages (each skipped when its output exists under --config.workdir):
  tokenizer  a small BPE trained on the shipped GSM8K text (SDAR special tokens + template)
  init       a random tiny SDAR written as a Hugging Face dir (what a user downloads)
  convert    HF dir -> orbax model dir
  export     model dir -> HF dir again; checked byte for byte against the input
  decode     few-step block-diffusion decoding of GSM8K prompts at 1, 2 and 4 tokens
             per forward (block 4), with forwards and tokens/s

The weights are random, so the decoded text is noise: the tour shows the machinery
(conversion both ways, the jitted sampler, the commit modes), not quality. The full
pretrain -> rollout -> distill -> evaluate demo replaces the last stage (issue 7).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import jax
import numpy as np
from absl import logging

from t3d_jax.convert import convert_hf_to_model_dir, export_model_dir_to_hf, load_params
from t3d_jax.convert.hf import TensorSource, save_hf_params
from t3d_jax.models.sdar import SDARConfig, init_params


def _stage(name: str, done: bool) -> bool:
  print(f"[demo] {name}: {'done, skipped' if done else 'running'}", flush=True)
  return not done


def _tensor_bytes(hf_dir: Path) -> dict:
  src = TensorSource(hf_dir)
  return {name: src.get(name).tobytes() for name in src.weight_map}


def run(config) -> None:
  from t3d_jax.data import tokenizer as tok_lib
  from t3d_jax.data.datasets import load_qa
  from t3d_jax.data.tokenizer_build import train_tiny_bpe
  from t3d_jax.sampling.config import DecodeConfig
  from t3d_jax.sampling.rollout import pad_prompts
  from t3d_jax.sampling.sampler import generate

  d = config.demo
  work = Path(config.workdir)
  work.mkdir(parents=True, exist_ok=True)
  tok_dir, hf_dir, model_dir, export_dir = (work / "tokenizer", work / "hf_init", work / "model",
                                            work / "hf_export")
  if _stage("tokenizer", (tok_dir / "tokenizer.json").is_file()):
    train_tiny_bpe(tok_dir, vocab_size=d.vocab_size)
  tokenizer = tok_lib.load_tokenizer(tok_dir)
  ids = tok_lib.special_ids(tokenizer)

  if _stage("init", (hf_dir / "model.safetensors.index.json").is_file()):
    cfg = SDARConfig(vocab_size=ids.vocab_size, hidden_size=d.hidden_size,
                     intermediate_size=d.intermediate_size, num_layers=d.num_layers,
                     num_heads=d.num_heads, num_kv_heads=d.num_kv_heads, head_dim=d.head_dim)
    params = jax.device_get(init_params(cfg, jax.random.key(config.seed)))
    save_hf_params(params, cfg, hf_dir, overwrite=True)
    for f in tok_dir.iterdir():
      shutil.copy2(f, hf_dir / f.name)

  if _stage("convert", (model_dir / "sdar_config.json").is_file()):
    convert_hf_to_model_dir(hf_dir, model_dir, overwrite=True)

  if _stage("export", (export_dir / "config.json").is_file()):
    export_model_dir_to_hf(model_dir, export_dir, overwrite=True)
    same = _tensor_bytes(hf_dir) == _tensor_bytes(export_dir)
    print(f"[demo]   HF -> orbax -> HF tensors byte-identical: {same}")
    if not same:
      raise RuntimeError(f"{export_dir}: exported tensors differ from {hf_dir}")

  params, cfg = load_params(model_dir)
  questions = [r["question"] for r in load_qa(d.dataset, limit=d.num_prompts)]
  prompts = tok_lib.encode(tokenizer, [tok_lib.math_prompt(tokenizer, q) for q in questions])
  prompt_ids, lens = pad_prompts(prompts, len(prompts), max(map(len, prompts)))
  rows = []
  if _stage("decode", False):
    for tpf in d.tokens_per_forward:
      dcfg = DecodeConfig(block_size=d.block_size, denoising_steps=d.block_size // tpf,
                          max_new_tokens=d.max_new_tokens, mask_id=ids.mask_id,
                          stop_ids=ids.stop_ids, pad_id=ids.pad_id, commit_mode="fused")
      out = generate(params, cfg, prompt_ids, lens, jax.random.key(0), dcfg)  # compile
      jax.block_until_ready(out)
      t0 = time.perf_counter()
      out = jax.block_until_ready(generate(params, cfg, prompt_ids, lens, jax.random.key(0), dcfg))
      dt = time.perf_counter() - t0
      n_tok, nfe = int(np.sum(out["lengths"])), int(np.sum(out["nfe"]))
      rows.append(dict(tokens_per_forward=tpf, tokens=n_tok, forwards=nfe,
                       tpf_measured=n_tok / max(nfe, 1), tokens_per_s=n_tok / dt))
  print(f"[demo] {len(prompts)} GSM8K prompts, block {d.block_size}, random weights, fused commit")
  print(f"{'tokens/forward':>15}{'tokens':>8}{'forwards':>10}{'TPF':>7}{'tokens/s':>10}")
  for r in rows:
    print(f"{r['tokens_per_forward']:>15}{r['tokens']:>8}{r['forwards']:>10}"
          f"{r['tpf_measured']:>7.2f}{r['tokens_per_s']:>10.0f}")
  (work / "demo_summary.json").write_text(json.dumps(rows, indent=2) + "\n")
  logging.info("demo summary written to %s", work / "demo_summary.json")
