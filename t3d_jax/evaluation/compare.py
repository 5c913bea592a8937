"""Methods x seeds: eval results grouped by method, mean ± sd per tokens-per-forward
setting, gap closure, full-step cost and AUP (the compare mode's table and plot).

A model named ``<method>_s<seed>`` (e.g. ``t3d_s1``) is one seed of ``<method>``; any
other name is a group of its own. With the base model's accuracy b(t) at t tokens per
forward and t1 the fewest (full step):

* gap closure at t = (acc(t) - b(t)) / (b(t1) - b(t)), per seed (None where the base
  has no gap);
* full-step cost = b(t1) - acc(t1), per seed (points);
* every value reported as the mean and sample sd (ddof 1; 0 for one seed) over seeds,
  with the per-seed values kept.
"""
from __future__ import annotations

import math
import re
from typing import Mapping, Optional, Sequence

_SEED = re.compile(r"^(?P<group>.+)_s(?P<seed>\d+)$")


def group_of(model: str) -> tuple[str, Optional[int]]:
  m = _SEED.match(model)
  return (m["group"], int(m["seed"])) if m else (model, None)


def mean_sd(values: Sequence[float]) -> dict:
  """{"mean", "sd", "values"} (sd: sample standard deviation, 0 for one value)."""
  v = [float(x) for x in values]
  mean = sum(v) / len(v)
  sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
  return dict(mean=mean, sd=sd, values=v)


def aggregate(results: Sequence[Mapping], aups: Mapping[str, float], base: str) -> dict:
  """{group: {"seeds", "accuracy": {tpf: mean_sd (percent)}, "gap_closure": {tpf:
  mean_sd | None}, "full_step_cost": mean_sd | None, "aup": mean_sd}} of eval results
  (one strategy)."""
  acc: dict = {}  # group -> seed -> tpf -> accuracy %
  for r in results:
    g, seed = group_of(r["model"])
    acc.setdefault(g, {}).setdefault(seed, {})[int(r["tokens_per_forward"])] = (
        100.0 * r["accuracy"])
  if base not in acc:
    raise ValueError(f"no base model {base!r} among the evaluated models {sorted(acc)}")
  if len(acc[base]) != 1:
    raise ValueError(f"the base model {base!r} must be one model, not several seeds")
  b = next(iter(acc[base].values()))
  tpfs = sorted(b)
  full = tpfs[0]
  out = {}
  for g, seeds in acc.items():
    runs = [seeds[k] for k in sorted(seeds, key=lambda k: -1 if k is None else k)]
    entry = dict(seeds=sorted(k for k in seeds if k is not None),
                 accuracy={t: mean_sd([r[t] for r in runs]) for t in tpfs if all(
                     t in r for r in runs)})
    gaps = {}
    for t in tpfs[1:]:
      denom = b[full] - b[t]
      gaps[t] = (mean_sd([(r[t] - b[t]) / denom for r in runs])
                 if denom > 0 and all(t in r for r in runs) else None)
    entry["gap_closure"] = gaps
    entry["full_step_cost"] = (mean_sd([b[full] - r[full] for r in runs])
                               if all(full in r for r in runs) else None)
    names = [r_name for r_name in aups if group_of(r_name)[0] == g]
    entry["aup"] = mean_sd([aups[n] for n in names]) if names else None
    out[g] = entry
  return out


def _cell(ms: Optional[Mapping], scale: float = 1.0, digits: int = 1) -> str:
  if ms is None:
    return "-"
  if len(ms["values"]) == 1:
    return f"{scale * ms['mean']:.{digits}f}"
  return f"{scale * ms['mean']:.{digits}f} ± {scale * ms['sd']:.{digits}f}"


def format_table(groups: Mapping[str, Mapping], base: str) -> str:
  """One row per method: accuracy % at each TPF, gap closure % at the few-step TPFs,
  full-step cost (points) and AUP, each mean ± sd over its seeds."""
  tpfs = sorted(groups[base]["accuracy"])
  cols = ([f"TPF {t}" for t in tpfs] + [f"gap@{t} %" for t in tpfs[1:]]
          + ["full-step cost", "AUP"])
  w = max([12] + [len(g) + 2 for g in groups])
  head = f"{'method':<{w}}{'seeds':>6}" + "".join(f"{c:>16}" for c in cols)
  lines = [head, "-" * len(head)]
  for g, e in sorted(groups.items(), key=lambda kv: (kv[0] != base, kv[0])):
    cells = ([_cell(e["accuracy"].get(t)) for t in tpfs]
             + [_cell(e["gap_closure"].get(t), 100.0) if g != base else "-" for t in tpfs[1:]]
             + [_cell(e["full_step_cost"]) if g != base else "-", _cell(e["aup"])])
    lines.append(f"{g:<{w}}{max(1, len(e['seeds'])):>6}" + "".join(f"{c:>16}" for c in cells))
  return "\n".join(lines)


def gain_lines(groups: Mapping[str, Mapping], base: str, most: int = 6) -> list[str]:
  """The figure eval ends on: each model (group) against the base, accuracy at each TPF,
  gap closed at the few-step ones, full-step cost; one line each (at most ``most``)."""
  tpfs = sorted(groups[base]["accuracy"])
  fmt = lambda acc: " / ".join(_cell(acc.get(t)) for t in tpfs)  # noqa: E731
  lines = [f"{base} {fmt(groups[base]['accuracy'])} % at TPF {' / '.join(map(str, tpfs))}"]
  others = [g for g in sorted(groups) if g != base]
  for g in others[:most]:
    e = groups[g]
    gaps = ", ".join(f"{_cell(e['gap_closure'][t], 100.0, 0)} % at TPF {t}"
                     for t in tpfs[1:] if e["gap_closure"].get(t) is not None)
    lines.append(f"{g} {fmt(e['accuracy'])} %; gap closed {gaps or '-'}; full-step cost "
                 f"{_cell(e['full_step_cost'])} points")
  if len(others) > most:
    lines.append(f"... and {len(others) - most} more (the compare table has them all)")
  return lines
