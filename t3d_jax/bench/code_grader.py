"""Seconds per graded sample of the code grader, and the pass rate of HumanEval's
canonical solutions (expected: all 164 pass).

python -m t3d_jax.bench code_grader [--limit N] [--timeout 10]

Each canonical solution is graded as a model response would be (the completion after
the prompt's opened ```python block), through ``tasks.load_task("code")``: extraction,
the sandboxed child process with its limits, the problem's tests. Prints the isolation
this machine allows, the pass count, mean / median seconds per sample, and every failure
with its reason.
"""
from __future__ import annotations

import argparse
import statistics
import time


def main(argv) -> int:
  ap = argparse.ArgumentParser(prog="python -m t3d_jax.bench code_grader")
  ap.add_argument("--limit", type=int, default=0, help="first N problems (0 = all 164)")
  ap.add_argument("--timeout", type=float, default=10.0, help="seconds per program")
  args = ap.parse_args(argv)
  import gzip
  import json

  from t3d_jax.data.code_sets import humaneval_file, load_code_rows
  from t3d_jax.tasks import load_task, sandbox
  rows = load_code_rows("humaneval", limit=args.limit or None)
  with gzip.open(humaneval_file(), "rt") as f:
    canonical = [json.loads(line)["canonical_solution"] for line in f][:len(rows)]
  print(f"isolation: {sandbox.describe()}", flush=True)
  grader = load_task("code")
  times, failed = [], []
  for row, solution in zip(rows, canonical):
    t0 = time.perf_counter()
    g = grader(row["question"], row["answer"], solution + "\n```", timeout_s=args.timeout)
    times.append(time.perf_counter() - t0)
    if not g.correct:
      failed.append((row["index"], g.reason))
  n = len(rows)
  print(f"canonical solutions passed: {n - len(failed)}/{n}; seconds per graded sample: "
        f"mean {statistics.mean(times):.3f}, median {statistics.median(times):.3f}, "
        f"max {max(times):.3f}")
  for i, reason in failed:
    print(f"  HumanEval/{i}: {reason}")
  return 0
