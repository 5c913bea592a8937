"""A tiny offline model dir (BPE tokenizer + random SDAR) and synthetic trajectories."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np

from t3d_jax.convert import convert_hf_to_model_dir
from t3d_jax.convert.hf import save_hf_params
from t3d_jax.data import tokenizer as tok_lib
from t3d_jax.data.datasets import load_qa
from t3d_jax.data.tokenizer_build import gsm8k_texts, train_tiny_bpe
from t3d_jax.models.sdar import SDARConfig, init_params


def make_model_dir(root: Path, seed: int = 0) -> Path:
  """root/tokenizer, root/hf (random tiny SDAR + tokenizer), root/model (converted)."""
  train_tiny_bpe(root / "tokenizer", texts=gsm8k_texts(limit=400), vocab_size=300)
  tok = tok_lib.load_tokenizer(root / "tokenizer")
  cfg = SDARConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_layers=2,
                   num_heads=4, num_kv_heads=2, head_dim=8)
  save_hf_params(jax.device_get(init_params(cfg, jax.random.key(seed))), cfg, root / "hf")
  for f in (root / "tokenizer").iterdir():
    shutil.copy2(f, root / "hf" / f.name)
  convert_hf_to_model_dir(root / "hf", root / "model")
  return root / "model"


def write_trajectories(path: Path, tokenizer_dir: Path, n: int = 12, block: int = 4,
                       seed: int = 0, questions=None) -> None:
  """Rows in the rollout layout with random responses ending in EOS and random
  per-block reveal orders (one token per step), for the first ``n`` GSM8K test questions
  or the given (question, answer) pairs."""
  tok = tok_lib.load_tokenizer(tokenizer_dir)
  ids = tok_lib.special_ids(tok)
  rng = np.random.RandomState(seed)
  rows = (load_qa("gsm8k_test", limit=n) if questions is None else
          [dict(question=q, answer=a) for q, a in questions])
  with open(path, "w") as f:
    for r in rows:
      length = int(rng.randint(3, 14))
      resp = [int(x) for x in rng.randint(30, ids.vocab_size - 1, length - 1)] + [ids.eos_id]
      smap = []
      for b0 in range(0, length, block):
        k = min(block, length - b0)
        smap += [int(x) + b0 + 1 for x in rng.permutation(k)]
      f.write(json.dumps(dict(
          question=r["question"], answer=r["answer"],
          prompt=tok_lib.math_prompt(tok, r["question"]), full_output=[tok.decode(resp)],
          response_ids=[resp], step_map=[smap], response_length=[length],
          extracted_output=[""])) + "\n")
