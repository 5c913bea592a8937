"""Peak host memory of loading a model into an 8-way sharded state, two ways.

python -m t3d_jax.bench load [--hidden 768] [--layers 12] [--devices 8]

Writes a random Qwen3-layout checkpoint (~124M params by default, fp32, 3 shards) and its
orbax model dir, then loads each into params sharded over ``--devices`` fake CPU devices
(mesh fsdp=N: every param's embed dimension split N ways), each in a fresh child process:

* ``host copy``: ``convert.load_params`` (the whole model on the host) then
  ``sharding.shard_tree`` into the shardings (what the training modes did before);
* ``sharded``: ``convert.load_params_sharded`` (HF: one stacked param at a time, each
  device given its own slice; model dir: orbax restores into the target shardings).

On a CPU the device buffers are host memory too, so the loaded params themselves take
one model's worth of RSS; what differs is the transient on top: a second full copy
(host copy), or the param in flight (sharded; from a model dir orbax adds its OCDBT read
cache, a fixed 100 MB). Reported: peak RSS above the import baseline, as a multiple of
the weights' size, and the largest (stacked) param.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = r"""
import json, os, sys
def status(key):  # kB lines of /proc/self/status (VmRSS now, VmHWM the peak)
  for line in open("/proc/self/status"):
    if line.startswith(key + ":"):
      return int(line.split()[1]) / 1024
import jax, numpy as np, orbax.checkpoint, transformers  # noqa: F401  (import baseline)
from t3d_jax import sharding
from t3d_jax.convert import load_params, load_params_sharded
path, how = sys.argv[1], sys.argv[2]
mesh = sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
rules = sharding.DEFAULT_RULES
jax.block_until_ready(jax.numpy.zeros(8) + 1)  # backend up before the baseline
with open("/proc/self/clear_refs", "w") as f:  # peak := now (ru_maxrss would keep the
  f.write("5")                                   # parent's peak across fork + exec)
base = status("VmRSS")
if how == "host":
  params, cfg = load_params(path)
  params = sharding.shard_tree(params, sharding.param_shardings(cfg, mesh, rules))
else:
  params, cfg = load_params_sharded(path, mesh, rules)
jax.block_until_ready(params)
peak = status("VmHWM")
leaves = jax.tree.leaves(params)
ok = all(len(x.sharding.device_set) == len(jax.devices()) for x in leaves)
print(json.dumps(dict(base_mb=base, peak_mb=peak,
                      nbytes=sum(x.nbytes for x in leaves),
                      largest=max(x.nbytes for x in leaves), sharded=ok)))
"""


def measure(path: Path, how: str, devices: int) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  r = subprocess.run([sys.executable, "-c", _CHILD, str(path), how], capture_output=True,
                     text=True, env=env)
  if r.returncode:
    sys.exit(r.stderr[-3000:])
  return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(prog="python -m t3d_jax.bench load")
  ap.add_argument("--hidden", type=int, default=768)
  ap.add_argument("--layers", type=int, default=12)
  ap.add_argument("--vocab", type=int, default=32000)
  ap.add_argument("--devices", type=int, default=8)
  ap.add_argument("--workdir", default="")
  a = ap.parse_args(argv)
  from t3d_jax.bench.convert import write_random_checkpoint
  from t3d_jax.convert import convert_hf_to_model_dir
  with tempfile.TemporaryDirectory(dir=a.workdir or None) as tmp:
    tmp = Path(tmp)
    nbytes = write_random_checkpoint(tmp / "hf", a.hidden, a.layers, a.vocab, "float32")
    convert_hf_to_model_dir(tmp / "hf", tmp / "model")
    rows = [(src, how, measure(tmp / src, how, a.devices))
            for src in ("hf", "model") for how in ("host", "sharded")]
  mb = nbytes / 2**20
  print(f"checkpoint: {nbytes / 4 / 1e6:.1f}M params, float32, {mb:.0f} MiB of weights; "
        f"{a.devices}-way fsdp mesh of fake CPU devices")
  print(f"{'source':<10}{'how':<10}{'peak above import MiB':>23}{'x weights':>11}"
        f"{'largest param MiB':>19}{'sharded':>9}")
  for src, how, m in rows:
    above = m["peak_mb"] - m["base_mb"]
    print(f"{src:<10}{'host copy' if how == 'host' else how:<10}{above:>23.0f}"
          f"{above / mb:>11.2f}{m['largest'] / 2**20:>19.0f}{str(m['sharded']):>9}")


if __name__ == "__main__":
  main()
