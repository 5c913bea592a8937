"""Decoding metrics: accuracy, response length, NFE, TPF, tokens/s, and d3LLM's AUP.

Per-sample inputs (one dict per decoded prompt, as the eval mode writes them):

* ``correct`` (bool): the grade;
* ``response_length`` (int): generated tokens kept in the response (up to and including
  the stop token; padding after it not counted);
* ``nfe`` (int): forward passes of the model that this sample took part in (every
  denoising step, plus commit passes where the sampler runs them; the prompt prefill is
  not counted).

Aggregates (:func:`summarize`):

* accuracy = mean of ``correct`` (fraction in [0, 1]), with its 95 % Wilson interval
  ``accuracy_ci95`` (samples taken as independent: with several samples per question
  the interval is narrower than the question-level uncertainty);
* mean_response_length = mean of ``response_length``;
* nfe_total = sum of ``nfe``; nfe_mean = nfe_total / n;
* TPF (tokens per forward) = sum(response_length) / sum(nfe): tokens produced per
  forward pass of one sequence, the hardware-independent parallelism of the decoder;
* tokens_per_s = sum(response_length) / wall seconds of the decoding (batched
  throughput; depends on hardware and batch size, reported with both).

AUP, accuracy under parallelism (Qian et al., "d3LLM", 2026; formula as in the d3LLM
leaderboard's ``aup_utils.py``, re-derived here). Given the points (rho_i, y_i) of one
model at several decoding settings, rho = TPF and y = accuracy in PERCENT:

1. sort the points by rho (ascending): rho_1 < ... < rho_m;
2. keep only points with y_i >= y_1 - y_min_offset (default 5 points below the accuracy
   at the lowest parallelism); the leaderboard code asserts instead, we drop;
3. with the quality weight W(y) = min(1, exp(-alpha * (1 - y / y_max))), alpha = 3 and
   y_max the best accuracy among all models compared (default: the best of these
   points),

       AUP = rho_1 * y_1 + sum_{i=2..m} (rho_i - rho_{i-1}) * (y_i W(y_i) + y_{i-1} W(y_{i-1})) / 2

   i.e. the rectangle under the first point plus the trapezoidal area under the
   quality-weighted accuracy curve. Higher is better: faster decoding only counts while
   accuracy holds up.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Optional, Sequence


def accuracy(correct: Iterable[bool]) -> float:
  """Fraction of correct samples; raises on an empty list."""
  values = [bool(c) for c in correct]
  if not values:
    raise ValueError("accuracy of zero samples")
  return sum(values) / len(values)


Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
  """The Wilson score interval (default 95 %) of a binomial proportion correct / n:
  the p whose score test |p_hat - p| / sqrt(p (1 - p) / n) <= z. Stays inside [0, 1]
  and is not degenerate at 0 or n correct (the normal interval is)."""
  if n <= 0 or not 0 <= correct <= n:
    raise ValueError(f"wilson_interval of {correct} correct in {n}")
  p = correct / n
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
  return max(0.0, centre - half), min(1.0, centre + half)


def tokens_per_forward(total_tokens: float, total_forwards: float) -> float:
  """TPF = tokens / forward passes (0 when no forward ran)."""
  return float(total_tokens) / float(total_forwards) if total_forwards > 0 else 0.0


def summarize(samples: Sequence[Mapping], wall_time_s: Optional[float] = None) -> dict:
  """Aggregate metrics of per-sample dicts with ``correct``, ``response_length``, ``nfe``.

  ``tokens_per_s`` is present only when ``wall_time_s`` is given (and > 0)."""
  if not samples:
    raise ValueError("summarize of zero samples")
  for k in ("correct", "response_length", "nfe"):
    missing = [i for i, s in enumerate(samples) if k not in s]
    if missing:
      raise KeyError(f"samples {missing[:5]} lack {k!r}")
  n = len(samples)
  tokens = sum(int(s["response_length"]) for s in samples)
  nfe = sum(int(s["nfe"]) for s in samples)
  n_correct = sum(bool(s["correct"]) for s in samples)
  out = {
      "n": n,
      "accuracy": n_correct / n,
      "accuracy_ci95": list(wilson_interval(n_correct, n)),
      "mean_response_length": tokens / n,
      "nfe_total": nfe,
      "nfe_mean": nfe / n,
      "tpf": tokens_per_forward(tokens, nfe),
      "tokens_total": tokens,
  }
  if wall_time_s is not None and wall_time_s > 0:
    out["wall_time_s"] = float(wall_time_s)
    out["tokens_per_s"] = tokens / float(wall_time_s)
  return out


def aup_weight(y: float, y_max: float, alpha: float = 3.0) -> float:
  """W(y) = min(1, exp(-alpha * (1 - y / y_max)))."""
  return min(1.0, math.exp(-alpha * (1.0 - y / y_max)))


def aup(tpf: Sequence[float], accuracy_pct: Sequence[float], y_max: Optional[float] = None,
        alpha: float = 3.0, y_min_offset: float = 5.0) -> float:
  """Accuracy under parallelism of one model's (TPF, accuracy %) points; see module doc."""
  if len(tpf) != len(accuracy_pct) or not tpf:
    raise ValueError(f"need equal, non-zero numbers of TPF and accuracy values, got "
                     f"{len(tpf)} and {len(accuracy_pct)}")
  if any(r <= 0 for r in tpf):
    raise ValueError(f"TPF values must be positive: {list(tpf)}")
  if any(not 0 <= y <= 100 for y in accuracy_pct):
    raise ValueError(f"accuracy must be in percent [0, 100]: {list(accuracy_pct)}")
  points = sorted(zip(map(float, tpf), map(float, accuracy_pct)))
  y_max = max(y for _, y in points) if y_max is None else float(y_max)
  if y_max <= 0:
    return 0.0
  floor = points[0][1] - y_min_offset
  points = [(r, y) for r, y in points if y >= floor]
  total = points[0][0] * points[0][1]
  for (r0, y0), (r1, y1) in zip(points, points[1:]):
    total += 0.5 * (r1 - r0) * (y1 * aup_weight(y1, y_max, alpha)
                                + y0 * aup_weight(y0, y_max, alpha))
  return total


def pass_at_k(n: int, c: int, k: int) -> float:
  """The unbiased pass@k of one problem from n samples, c of them correct (Chen et al.,
  2021): 1 - C(n - c, k) / C(n, k)."""
  if not 0 < k <= n or not 0 <= c <= n:
    raise ValueError(f"pass@{k} of {c} correct in {n} samples: need 0 < k <= n, 0 <= c <= n")
  return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_at_ks(samples: Sequence[Mapping], num_samples: int) -> dict:
  """{"pass@k": mean over questions} for k = 1, 2, 5, 10, ... up to ``num_samples``, of
  per-sample dicts with ``index`` (the question) and ``correct``."""
  by_q: dict = {}
  for s in samples:
    by_q.setdefault(s["index"], []).append(bool(s["correct"]))
  ks = [k for k in (1, 2, 5, 10, 20, 50, 100) if k < num_samples] + [num_samples]
  return {f"pass@{k}": sum(pass_at_k(len(c), sum(c), k) for c in by_q.values()) / len(by_q)
          for k in sorted(set(ks))}
