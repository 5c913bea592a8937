"""Conversion cost: wall time and peak RSS of HF dir -> orbax model dir -> HF dir.

python -m t3d_jax.bench convert [--dtype bfloat16] [--layers 12] [--hidden 768]

Writes a random Qwen3-layout checkpoint (~100M params by default) as 3 safetensors
shards + index, then converts it in a fresh child process so peak RSS is the
conversion's own (import baseline reported separately).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_CHILD = r"""
import json, resource, sys, time
t0 = time.time()
import jax, orbax.checkpoint, transformers  # noqa: F401  (import baseline)
from t3d_jax.convert import convert_hf_to_model_dir, export_model_dir_to_hf
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t1 = time.time()
convert_hf_to_model_dir(sys.argv[1], sys.argv[2])
t2 = time.time()
conv = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
export_model_dir_to_hf(sys.argv[2], sys.argv[3], max_shard_bytes=int(sys.argv[4]))
t3 = time.time()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(dict(import_s=t1 - t0, convert_s=t2 - t1, export_s=t3 - t2,
                      base_rss_mb=base / 1024, convert_peak_rss_mb=conv / 1024,
                      export_peak_rss_mb=peak / 1024)))
"""


def write_random_checkpoint(out: Path, hidden: int, layers: int, vocab: int, dtype: str,
                            shards: int = 3, intermediate: int = 0) -> int:
  """Random Qwen3 checkpoint, built without torch, split into ``shards`` files."""
  from safetensors.numpy import save_file

  from t3d_jax.convert.hf import hf_config_from
  from t3d_jax.models.family import of_config
  from t3d_jax.dtypes import as_dtype
  from t3d_jax.models.sdar import SDARConfig
  cfg = SDARConfig(vocab_size=vocab, hidden_size=hidden,
                   intermediate_size=intermediate or hidden * 8 // 3,
                   num_layers=layers, num_heads=hidden // 64, num_kv_heads=max(1, hidden // 256),
                   head_dim=64, param_dtype=dtype)
  np_dtype = as_dtype(dtype)
  ents = of_config(cfg).tensors_hf_order(cfg)
  rng = np.random.default_rng(0)
  out.mkdir(parents=True, exist_ok=True)
  per = -(-len(ents) // shards)
  weight_map, total = {}, 0
  for k in range(shards):
    fname = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
    tensors = {}
    for name, row, _ in ents[k * per:(k + 1) * per]:
      tensors[name] = (rng.standard_normal(row.hf_shape(cfg), np.float32) * 0.02).astype(np_dtype)
      weight_map[name] = fname
      total += tensors[name].nbytes
    save_file(tensors, str(out / fname), metadata={"format": "pt"})
  (out / "model.safetensors.index.json").write_text(
      json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
  (out / "config.json").write_text(json.dumps(hf_config_from(cfg)))
  return total


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(prog="python -m t3d_jax.bench convert")
  ap.add_argument("--hidden", type=int, default=768)
  ap.add_argument("--layers", type=int, default=12)
  ap.add_argument("--vocab", type=int, default=32000)
  ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  ap.add_argument("--workdir", default="")
  a = ap.parse_args(argv)
  with tempfile.TemporaryDirectory(dir=a.workdir or None) as tmp:
    tmp = Path(tmp)
    nbytes = write_random_checkpoint(tmp / "hf", a.hidden, a.layers, a.vocab, a.dtype)
    nparams = nbytes // (4 if a.dtype == "float32" else 2)
    t = time.time()
    r = subprocess.run([sys.executable, "-c", _CHILD, str(tmp / "hf"), str(tmp / "model"),
                        str(tmp / "out"), str(nbytes // 3 + 1)], capture_output=True, text=True)
    if r.returncode:
      sys.exit(r.stderr[-3000:])
    m = json.loads(r.stdout.strip().splitlines()[-1])
  mb = nbytes / 2**20
  print(f"checkpoint: {nparams / 1e6:.1f}M params, {a.dtype}, 3 shards, {mb:.0f} MiB of weights")
  print(f"{'stage':<22}{'wall s':>8}{'peak RSS MiB':>14}{'above import MiB':>18}")
  print(f"{'import baseline':<22}{m['import_s']:>8.1f}{m['base_rss_mb']:>14.0f}{0:>18.0f}")
  print(f"{'HF -> orbax':<22}{m['convert_s']:>8.1f}{m['convert_peak_rss_mb']:>14.0f}"
        f"{m['convert_peak_rss_mb'] - m['base_rss_mb']:>18.0f}")
  print(f"{'orbax -> HF (3 shards)':<22}{m['export_s']:>8.1f}{m['export_peak_rss_mb']:>14.0f}"
        f"{m['export_peak_rss_mb'] - m['base_rss_mb']:>18.0f}")
  print(f"peak above import / weight size: {(m['export_peak_rss_mb'] - m['base_rss_mb']) / mb:.2f}x"
        f"  (child process total {time.time() - t:.1f}s)")


if __name__ == "__main__":
  main()
