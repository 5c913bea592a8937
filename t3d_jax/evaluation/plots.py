"""PNG plots with matplotlib's Agg canvas (no display, no pyplot global state).

* :func:`plot_accuracy_vs_tpf`: accuracy (%) against tokens per forward, one line per
  model (e.g. base and distilled), points sorted by TPF, AUP in the legend when given.
* :func:`plot_step_maps`: the reveal order of a few trajectories. Each trajectory is a
  grid with one row per block and one column per position in the block; the colour of a
  cell is the (global, 1-based) denoising step at which that token was revealed; cells
  past the end of the response or with step <= 0 (never revealed) are left blank.
"""
from __future__ import annotations

import os
import pathlib
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from t3d_jax.fileio import atomic_write_with

PathLike = Union[str, os.PathLike]


def _figure(width: float, height: float):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(width, height), dpi=100)
  FigureCanvasAgg(fig)
  return fig


def _save(fig, path: PathLike) -> pathlib.Path:
  return atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png"))


def plot_accuracy_vs_tpf(curves: Mapping[str, Sequence[tuple]], path: PathLike,
                         title: str = "Accuracy vs tokens per forward",
                         aup: Optional[Mapping[str, float]] = None) -> pathlib.Path:
  """``curves[model] = [(tpf, accuracy), ...]`` or ``[(tpf, accuracy, low, high), ...]``
  (an interval: error bars), in percent, or all fractions (<= 1, shown in percent).
  Returns the PNG path."""
  if not curves:
    raise ValueError("no curves to plot")
  fig = _figure(6.4, 4.4)
  ax = fig.add_subplot(1, 1, 1)
  for name, points in curves.items():
    pts = sorted(tuple(float(v) for v in p) for p in points)
    if not pts:
      continue
    cols = list(zip(*pts))
    if max(cols[1]) <= 1.0 and (len(cols) < 4 or max(cols[3]) <= 1.0):
      cols[1:] = [[100.0 * v for v in c] for c in cols[1:]]
    xs, ys = cols[0], cols[1]
    label = name if not aup or name not in aup else f"{name} (AUP {aup[name]:.1f})"
    if len(cols) >= 4:  # asymmetric error bars: the interval around each point
      err = [[y - lo for y, lo in zip(ys, cols[2])], [hi - y for y, hi in zip(ys, cols[3])]]
      ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label)
    else:
      ax.plot(xs, ys, marker="o", label=label)
  ax.set_xlabel("tokens per forward (TPF)")
  ax.set_ylabel("accuracy (%)")
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  ax.legend(loc="best")
  fig.tight_layout()
  return _save(fig, path)


def step_map_grid(step_map: Sequence[int], block_size: int) -> np.ma.MaskedArray:
  """[n_blocks, block_size] masked grid of reveal steps (masked: padding, step <= 0)."""
  if block_size <= 0:
    raise ValueError(f"block_size must be positive, got {block_size}")
  steps = np.asarray(step_map, dtype=np.float64).reshape(-1)
  n_blocks = max(1, -(-len(steps) // block_size))
  grid = np.zeros(n_blocks * block_size)
  grid[:len(steps)] = steps
  grid = grid.reshape(n_blocks, block_size)
  return np.ma.masked_less_equal(grid, 0)


def relative_steps(grid: np.ma.MaskedArray) -> np.ma.MaskedArray:
  """Steps counted from each block's first reveal (1 = revealed first in its block)."""
  first = grid.min(axis=1, keepdims=True)
  return grid - first + 1


def plot_step_maps(step_maps: Sequence[Sequence[int]], path: PathLike, block_size: int = 4,
                   titles: Optional[Sequence[str]] = None, max_blocks: int = 64,
                   relative: bool = False, annotate: Optional[bool] = None) -> pathlib.Path:
  """Heat-maps of a few trajectories side by side (first ``max_blocks`` blocks of each).

  ``relative=True`` colours the order inside each block instead of the global step.
  Cells carry their step number when ``annotate`` (default: when a grid has at most 400
  cells). Returns the PNG path."""
  if not step_maps:
    raise ValueError("no step maps to plot")
  grids = [step_map_grid(s, block_size)[:max_blocks] for s in step_maps]
  if relative:
    grids = [relative_steps(g) for g in grids]
  rows = max(g.shape[0] for g in grids)
  if annotate is None:
    annotate = rows * block_size <= 400
  width = 1.6 + len(grids) * max(1.6, 0.4 * block_size)
  fig = _figure(width, 1.6 + 0.25 * rows)
  vmax = max(1.0, max(float(g.max()) if g.count() else 1.0 for g in grids))
  im = None
  for i, grid in enumerate(grids):
    ax = fig.add_subplot(1, len(grids), i + 1)
    im = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="viridis",
                   vmin=1, vmax=vmax)
    if annotate:
      for (r, c), v in np.ndenumerate(grid.filled(0)):
        if v > 0:
          ax.text(c, r, f"{int(v)}", ha="center", va="center", fontsize=6,
                  color="white" if v < 0.6 * vmax else "black")
    if i == 0:
      ax.set_ylabel("block")
    ax.set_xticks(range(block_size))
    name = titles[i] if titles and i < len(titles) else f"trajectory {i}"
    ax.set_title(name, fontsize=9)
  fig.supxlabel("position in block", fontsize=9)
  fig.colorbar(im, ax=fig.axes, label="order in block" if relative else "reveal step")
  return _save(fig, path)
