"""Where a jitted function's time goes, by kind of XLA op, from a JAX profiler trace.

    breakdown = op_breakdown(trace_dir, compiled.as_text(), calls=n)

The trace (``jax.profiler.trace(trace_dir)``) records one event per executed XLA:CPU
thunk, named after its HLO instruction; the compiled HLO text says what each one is.
Kinds: ``matmul`` (a dot, or a fusion whose computation holds one), ``transpose/copy``,
``slice/update`` (dynamic-slice / dynamic-update-slice: the per-layer reads and writes
of scanned weights and gradients), ``fill`` (broadcasts of a constant: zeroed
buffers), ``other`` (elementwise, reductions, scatter/gather, control flow bodies).
Loop instructions (while, conditional, call) only contain other events and are left
out. With several threads the events of concurrent ops overlap, so the sum exceeds the
wall time; run single-threaded (README, benchmarks) for an exact split.
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re

KINDS = ("matmul", "transpose/copy", "slice/update", "fill", "other")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.*?\s([\w\-]+)\((.*)$", re.M)
_OPS = re.compile(r"=\s*.*?\s([\w\-]+)\(")
_COMP = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\([^\n]*\{\s*$", re.M)
_CONTAINERS = ("while", "conditional", "call")


def _computations(hlo: str) -> dict[str, str]:
  """Computation name -> its body text."""
  out, starts = {}, [(m.group(1), m.end()) for m in _COMP.finditer(hlo)]
  for (name, start), nxt in zip(starts, starts[1:] + [("", len(hlo))]):
    out[name] = hlo[start:nxt[1]]
  return out


def classify(hlo: str) -> dict[str, str]:
  """HLO instruction name -> kind (one of KINDS) or ``container``."""
  comps = _computations(hlo)
  kinds = {}
  for m in _INSTR.finditer(hlo):
    name, op, rest = m.groups()
    called = re.search(r"calls=%?([\w.\-]+)", rest)
    body = comps.get(called.group(1), "") if called else ""
    ops = set(_OPS.findall(body)) | {op}
    if op in _CONTAINERS:
      kinds[name] = "container"
    elif ops & {"dot", "convolution"}:
      kinds[name] = "matmul"
    elif ops & {"dynamic-slice", "dynamic-update-slice"}:
      kinds[name] = "slice/update"
    elif ops & {"transpose", "copy"}:
      kinds[name] = "transpose/copy"
    elif ops <= {"fusion", "broadcast", "constant", "parameter"} and "broadcast" in ops:
      kinds[name] = "fill"
    else:
      kinds[name] = "other"
  return kinds


def trace_events(trace_dir: str) -> list[dict]:
  """The complete ('X') events of the newest trace under ``trace_dir``."""
  files = sorted(glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "*.trace.json.gz")))
  if not files:
    raise FileNotFoundError(f"{trace_dir}: no plugins/profile/*/*.trace.json.gz (no trace?)")
  with gzip.open(files[-1]) as f:
    return [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]


def op_breakdown(trace_dir: str, hlo: str, calls: int = 1) -> dict[str, float]:
  """Seconds per call of each kind (KINDS), summed over the traced ops of ``hlo``'s
  module (events with other names, e.g. runtime and Python frames, are ignored)."""
  kinds = classify(hlo)
  total = collections.Counter({k: 0.0 for k in KINDS})
  for e in trace_events(trace_dir):
    kind = kinds.get(e["name"])
    if kind in KINDS:
      total[kind] += e["dur"] * 1e-6 / calls
  return dict(total)
