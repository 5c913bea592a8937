"""The step benchmark's CLI (tiny model, both sides, interleaved) and its op profiler."""
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from t3d_jax.bench import profile

TINY = ["--vocab", "512", "--hidden", "64", "--intermediate", "128", "--layers", "2",
        "--heads", "4", "--kv-heads", "2", "--head-dim", "16", "--l0", "16", "--l1", "32"]


def test_classify_compiled_hlo():
  def f(x, w, i):
    y = jax.lax.fori_loop(0, 3, lambda k, h: jnp.tanh(h @ w), x)   # while + dot
    return jax.lax.dynamic_slice_in_dim(y.T, i, 4) + jnp.zeros((4, y.shape[0]))

  x, w = jnp.ones((8, 16)), jnp.ones((16, 16))
  hlo = jax.jit(f).lower(x, w, 2).compile().as_text()
  kinds = profile.classify(hlo)
  assert set(kinds.values()) <= set(profile.KINDS) | {"container"}
  assert "matmul" in kinds.values()
  assert "container" in kinds.values()            # the fori_loop's while
  dots = [n for n, k in kinds.items() if k == "matmul"]
  assert all(re.search(r"dot|fusion", n) for n in dots)


def test_op_breakdown_reads_a_real_trace(tmp_path):
  f = jax.jit(lambda x, w: jnp.tanh(x @ w).sum())
  x = jnp.ones((256, 256))
  compiled = f.lower(x, x).compile()
  compiled(x, x).block_until_ready()
  with jax.profiler.trace(str(tmp_path)):
    for _ in range(2):
      compiled(x, x).block_until_ready()
  split = profile.op_breakdown(str(tmp_path), compiled.as_text(), calls=2)
  assert set(split) == set(profile.KINDS)
  assert split["matmul"] > 0
  with pytest.raises(FileNotFoundError, match="no plugins/profile"):
    profile.op_breakdown(str(tmp_path / "none"), compiled.as_text())


def test_step_bench_cli(tmp_path):
  out = subprocess.run([sys.executable, "-m", "t3d_jax.bench", "step", *TINY, "--updates", "2",
                        "--profile", str(tmp_path / "trace"), "--families", "sdar,llada"],
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  text = out.stdout
  assert re.search(r"t3d_jax sdar \(jit\)\s+\d+\.\d+\s+\d+\.\d+%", text), text
  assert re.search(r"t3d_jax llada \(jit\)\s+\d+\.\d+\s+\d+\.\d+%.*\d+\.\d+x sdar", text), text
  assert re.search(r"released algorithm, PyTorch\s+\d+\.\d+", text), text
  assert re.search(r"speed-up: \d+\.\d+x \(per interleaved pair: min \d+\.\d+x, max", text), text
  shares = [float(v) for v in re.findall(r"^\s+[a-z/]+\s+\d+\.\d+s\s+(\d+\.\d+)%$", text, re.M)]
  assert len(shares) == len(profile.KINDS) and sum(shares) == pytest.approx(100, abs=0.5)
  assert "minor page faults per update" in text
