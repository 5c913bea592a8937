"""launch/gpu_bench.sh, the prepared GPU check: its model shapes are the SDAR configs'
architectures, and its four benches run end to end on a tiny model here (CPU)."""
import os
import re
import subprocess
import sys
from pathlib import Path

from t3d_jax.config_base import config_module

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "launch" / "gpu_bench.sh"
FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
          "num_kv_heads", "head_dim")


def _shape(text: str, name: str) -> tuple[int, ...]:
  return tuple(int(x) for x in re.search(rf"^\s+{name}=\(([\d ]+)\)", text, re.M)[1].split())


def test_shapes_are_the_sdar_architectures():
  text = SCRIPT.read_text()
  sdar = text[text.index("  sdar)"):text.index("  tiny)")]
  for name, path, arch in (("DECODE_MODEL", "sdar_4b_math.py", "ARCH_4B"),
                           ("STEP_MODEL", "sdar_1p7b_math.py", "ARCH_1P7B")):
    want = getattr(config_module(ROOT / "configs" / path), arch)
    assert _shape(sdar, name) == tuple(want[f] for f in FIELDS), name
    assert want["tie_word_embeddings"] and "TIE=(--tie)" in sdar


def test_tiny_run_writes_every_bench(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device, as on a GPU
  env.update(SHAPE="tiny", PYTHON=sys.executable)
  out = subprocess.run(["bash", str(SCRIPT), str(tmp_path)], env=env, capture_output=True,
                       text=True, timeout=900)
  assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
  assert "failed" not in out.stdout.splitlines()[-1]
  for kernel in ("dense", "cudnn"):
    sampler = (tmp_path / f"sampler-{kernel}.txt").read_text()
    assert f"bfloat16, attention {kernel}" in sampler
    rows = re.findall(r"^cached/fused \| (\d) \|.*\| \d+% \| - \| -$", sampler, re.M)
    assert rows == ["4", "1"], sampler   # s = 4 and 1, each with its MFU (tiny here: ~0-9 %)
    step = (tmp_path / f"step-{kernel}.txt").read_text()
    assert f"bfloat16, attention {kernel}" in step
    assert re.search(r"t3d_jax sdar \(jit\)\s+\d+\.\d+\s+\d+\.\d+%", step), step
    assert "released algorithm" not in step  # the PyTorch side is fp32 only


def test_benches_import_without_the_packages_the_gpu_image_lacks():
  """The GPU image has no ml_collections or tensorflow(-datasets), and the decode and step
  benches must not need torch either (only ``--peer`` and the fp32 reference use it)."""
  code = ("import sys\n"
          "for m in ('torch', 'ml_collections', 'tensorflow', 'tensorflow_datasets'):\n"
          "  sys.modules[m] = None  # import m -> ImportError\n"
          "import t3d_jax.bench.sampler, t3d_jax.bench.step\n")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
