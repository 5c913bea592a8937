"""Decoding metrics (hand-computed), AUP (hand-computed), and PNG plots."""
import math

import numpy as np
import pytest

from t3d_jax.evaluation import metrics, plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_summarize_hand_computed():
  samples = [{"correct": True, "response_length": 12, "nfe": 4},
             {"correct": False, "response_length": 8, "nfe": 4},
             {"correct": True, "response_length": 20, "nfe": 12},
             {"correct": True, "response_length": 0, "nfe": 0}]
  s = metrics.summarize(samples, wall_time_s=2.0)
  lo, hi = s.pop("accuracy_ci95")
  assert (lo, hi) == pytest.approx(metrics.wilson_interval(3, 4))
  assert s == {"n": 4, "accuracy": 0.75, "mean_response_length": 10.0, "nfe_total": 20,
               "nfe_mean": 5.0, "tpf": 2.0, "tokens_total": 40, "wall_time_s": 2.0,
               "tokens_per_s": 20.0}
  assert "tokens_per_s" not in metrics.summarize(samples)
  with pytest.raises(KeyError, match="'nfe'"):
    metrics.summarize([{"correct": True, "response_length": 1}])
  with pytest.raises(ValueError):
    metrics.accuracy([])
  assert metrics.tokens_per_forward(10, 0) == 0.0


def test_aup_hand_computed():
  # Points (TPF, acc%): (1, 80), (2, 78), (4, 70). y_1 = 80 -> floor 75 drops (4, 70).
  # W(80) = 1; W(78) = exp(-3 (1 - 78/80)) = exp(-0.075) = 0.9277434863
  # AUP = 1*80 + 0.5 * (2-1) * (78 * 0.9277434863 + 80 * 1) = 156.1819959...
  assert metrics.aup([4, 1, 2], [70, 80, 78]) == pytest.approx(156.18199596, abs=1e-6)
  # With y_max = 90 (a better model elsewhere) every point is down-weighted except the
  # first rectangle: 80 + 0.5 * (78 exp(-3*12/90) + 80 exp(-3*10/90)).
  want = 80 + 0.5 * (78 * math.exp(-0.4) + 80 * math.exp(-1 / 3))
  assert metrics.aup([1, 2, 4], [80, 78, 70], y_max=90) == pytest.approx(want)
  assert metrics.aup([3], [50]) == 150.0
  # Keeping accuracy while going faster always increases AUP.
  assert metrics.aup([1, 2, 4], [80, 80, 80]) == 80 + 0.5 * 160 + 1.0 * 160
  with pytest.raises(ValueError, match="percent"):
    metrics.aup([1, 2], [80, 120])
  with pytest.raises(ValueError, match="positive"):
    metrics.aup([0, 2], [80, 70])


def _check_png(path, min_colors=3):
  data = path.read_bytes()
  assert data[:8] == PNG_SIGNATURE and len(data) > 1000
  import matplotlib.image as mpimg
  img = mpimg.imread(str(path))
  assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
  assert len(np.unique(img.reshape(-1, img.shape[-1]), axis=0)) >= min_colors
  return img


def test_accuracy_vs_tpf_png(tmp_path):
  curves = {"base": [(1.0, 0.62), (2.0, 0.55), (4.0, 0.31)],
            "t3d": [(4.0, 0.58), (1.0, 0.63), (2.0, 0.61)]}
  p = plots.plot_accuracy_vs_tpf(curves, tmp_path / "plots" / "acc_tpf.png",
                                 aup={"base": 110.2, "t3d": 180.4})
  _check_png(p, min_colors=10)
  assert sorted(x.name for x in p.parent.iterdir()) == ["acc_tpf.png"]
  with pytest.raises(ValueError):
    plots.plot_accuracy_vs_tpf({}, tmp_path / "x.png")


def _score_interval_by_bisection(k, n, z=1.959963984540054):
  """The Wilson interval's definition solved numerically: the two p in [0, 1] where the
  score statistic (k/n - p)^2 n / (p (1 - p)) equals z^2."""
  phat = k / n
  excess = lambda p: (phat - p) ** 2 * n - z * z * p * (1 - p)  # noqa: E731  (<= 0 inside)
  def root(a, b):  # excess changes sign between a and b
    for _ in range(200):
      m = (a + b) / 2
      a, b = (m, b) if (excess(m) > 0) == (excess(a) > 0) else (a, m)
    return (a + b) / 2
  lo = 0.0 if k == 0 else root(0.0, phat)
  hi = 1.0 if k == n else root(phat, 1.0)
  return lo, hi


@pytest.mark.parametrize("k,n", [(0, 10), (3, 4), (37, 128), (128, 128), (1, 1), (500, 1000)])
def test_wilson_interval_solves_the_score_test(k, n):
  lo, hi = metrics.wilson_interval(k, n)
  assert (lo, hi) == pytest.approx(_score_interval_by_bisection(k, n), abs=1e-9)
  assert 0.0 <= lo <= k / n <= hi <= 1.0
  with pytest.raises(ValueError):
    metrics.wilson_interval(5, 4)


def test_accuracy_vs_tpf_png_with_error_bars(tmp_path):
  curves = {"base": [(1.0, 62.0, 55.0, 68.0), (4.0, 31.0, 24.0, 39.0)],
            "t3d": [(1.0, 63.0, 56.0, 69.0), (4.0, 58.0, 50.0, 65.0)]}
  _check_png(plots.plot_accuracy_vs_tpf(curves, tmp_path / "ci.png"), min_colors=10)


def test_step_map_grid_and_png(tmp_path):
  g = plots.step_map_grid([1, 3, 2, 4, 5, 6], block_size=4)
  assert g.shape == (2, 4)
  assert g[0].tolist() == [1, 3, 2, 4] and g.mask[1].tolist() == [False, False, True, True]
  rng = np.random.default_rng(0)
  maps = [np.concatenate([4 * b + 1 + rng.permutation(4) for b in range(n)])
          for n in (5, 12, 30)]
  maps[1][-3:] = 0                                         # never revealed: blank
  p = plots.plot_step_maps(maps, tmp_path / "steps.png", block_size=4,
                           titles=["a", "b", "c"])
  _check_png(p, min_colors=20)
  rel = plots.relative_steps(plots.step_map_grid([5, 7, 6, 8, 9, 10, 12, 11], 4))
  assert rel.tolist() == [[1, 3, 2, 4], [1, 2, 4, 3]]
  p = plots.plot_step_maps(maps, tmp_path / "rel.png", block_size=4, relative=True)
  _check_png(p, min_colors=20)
