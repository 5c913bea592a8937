"""Shared by test_rollout_mode.py and test_eval_mode.py: one tiny model per session, short
math questions, and the CLI runner (subprocess, CPU, persistent compile cache)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

QUESTIONS = [  # different lengths, so batches sort and pad
    ("What is 2 + 3?", "5"),
    ("Tom has 4 apples and buys 5 more. How many apples does he have now?", "#### 9"),
    ("What is 7 times 6?", "42"),
    ("A box holds 12 eggs. How many eggs are in 3 boxes?", "#### 36"),
    ("Compute $\\frac{1}{2} + \\frac{1}{4}$.", "\\frac{3}{4}"),
    ("Sara reads 10 pages a day for a week and then 5 pages on Sunday. How many pages?",
     "#### 75"),
    ("What is 9 - 4?", "5"),
    ("Half of 18 is what?", "9"),
]

# One decoding shape for every batch: the KV cache is fixed by max_length and every
# prompt width rounds up to 192, so each (steps) setting compiles once.
DECODE_FLAGS = ("--config.decode.max_length=192", "--config.decode.width_multiple=192")


def tiny_model(tmp_path_factory) -> Path:
  """root/tokenizer, root/hf, root/model of tests/tiny_setup.py, built once per session."""
  from tiny_setup import make_model_dir
  root = tmp_path_factory.getbasetemp() / "decode_tiny_model"
  if not (root / "model" / "sdar_config.json").is_file():
    make_model_dir(root)
  return root


def write_questions(path: Path, n: int = len(QUESTIONS)) -> Path:
  with open(path, "w") as f:
    for q, a in QUESTIONS[:n]:
      f.write(json.dumps(dict(question=q, answer=a)) + "\n")
  return path


def cli(config: str, *flags) -> subprocess.CompletedProcess:
  cache = os.environ.get("T3D_TEST_JAX_CACHE", "/tmp/t3d_jax_test_cache")
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", JAX_COMPILATION_CACHE_DIR=cache,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  cmd = [sys.executable, "-m", "t3d_jax.main", "--config", f"configs/{config}.py", *flags]
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def load_config(name: str):
  """configs/<name>.py's get_config(), loaded from its file as the CLI does."""
  from t3d_jax.config_base import config_module
  return config_module(REPO / "configs" / f"{name}.py").get_config()


def read_jsonl(path: Path) -> list[dict]:
  return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def signal_during_call(monkeypatch, module, name: str, call: int, signum):
  """``module.name`` sends ``signum`` to this process at its ``call``-th call (1-based),
  i.e. while that chunk is in flight, then runs as usual."""
  real, calls = getattr(module, name), []

  def wrapped(*args, **kw):
    calls.append(1)
    if len(calls) == call:
      os.kill(os.getpid(), signum)
    return real(*args, **kw)
  monkeypatch.setattr(module, name, wrapped)

