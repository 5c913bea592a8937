"""The README's main command, shortened: every stage runs, writes its artefacts, resumes."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_demo_cli_runs_and_resumes(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  cmd = [sys.executable, "-m", "t3d_jax.main", "--config", "configs/demo.py",
         f"--config.workdir={tmp_path}", "--config.demo.num_prompts=2",
         "--config.demo.max_new_tokens=8", "--config.demo.tokens_per_forward=(1,4)"]
  r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "tensors byte-identical: True" in r.stdout
  rows = json.loads((tmp_path / "demo_summary.json").read_text())
  assert [row["tokens_per_forward"] for row in rows] == [1, 4]
  for row in rows:
    assert 0 < row["tokens"] <= 2 * 8 and row["forwards"] > 0
  assert rows[1]["forwards"] < rows[0]["forwards"]  # 4 tokens per forward needs fewer
  for sub in ("tokenizer/tokenizer.json", "hf_init/model.safetensors.index.json",
              "model/sdar_config.json", "hf_export/config.json"):
    assert (tmp_path / sub).is_file(), sub
  r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0 and r.stdout.count("done, skipped") == 4, r.stdout
