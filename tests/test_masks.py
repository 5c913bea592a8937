"""The T3D masks against a straightforward, independent construction (loops over rows)."""
import numpy as np
import pytest

from t3d_jax import masks


def naive_training_mask(L0, L1, b, prompt_pad=None):
  """Written from the spec (docs/method.md §2), row by row."""
  N = L0 + 2 * L1
  M = np.zeros((N, N), bool)
  nb = -(-L1 // b)
  for i in range(L1):  # clean row i (block i//b) and noisy row i
    blk = i // b
    M[L0 + i, :L0] = True
    M[L0 + i, L0:L0 + min((blk + 1) * b, L1)] = True
    M[L0 + L1 + i, :L0] = True
    M[L0 + L1 + i, L0:L0 + blk * b] = True
    M[L0 + L1 + i, L0 + L1 + blk * b:L0 + L1 + min((blk + 1) * b, L1)] = True
  assert nb * b >= L1
  for i in range(L0):  # prompt blocks aligned to its end
    dist = L0 - 1 - i  # 0 for the last prompt token
    end = L0 - (dist // b) * b
    M[i, :end] = True
  if prompt_pad is not None:
    M[:, :L0] &= ~prompt_pad[None, :]
    for i in range(L0):
      if not M[i].any():
        M[i, i] = True
  return M


CASES = [(0, 4, 2), (3, 5, 2), (4, 8, 4), (5, 7, 4), (7, 6, 8), (1, 1, 1), (6, 9, 3)]


@pytest.mark.parametrize("L0,L1,b", CASES)
def test_training_mask_matches_naive(L0, L1, b):
  np.testing.assert_array_equal(np.asarray(masks.training_mask(L0, L1, b)),
                                naive_training_mask(L0, L1, b))


@pytest.mark.parametrize("L0,L1,b", [(5, 7, 4), (6, 8, 2), (4, 5, 3)])
def test_batched_mask_with_left_pads_and_all_pad_row(L0, L1, b):
  pad = 0
  rng = np.random.RandomState(L0 * 100 + L1)
  B = 4
  ids = rng.randint(1, 50, (B, L0 + 2 * L1))
  pads = [0, 2, L0 - 1, L0]  # the last row is an all-pad prompt
  for r, n in enumerate(pads):
    ids[r, :n] = pad
  ids[0, L0 + 1] = pad  # a pad inside the response stays visible
  got = np.asarray(masks.training_batch_mask(ids, L0, b, pad))
  for r in range(B):
    want = naive_training_mask(L0, L1, b, prompt_pad=ids[r, :L0] == pad)
    np.testing.assert_array_equal(got[r], want)
  assert got[3, :L0].sum() == L0  # all-pad prompt rows: self only
  np.testing.assert_array_equal(got[3, :L0, :L0], np.eye(L0, dtype=bool))


def test_positions():
  ids = np.array([[0, 0, 7, 8, 1, 2, 3, 9, 9, 9],
                  [5, 6, 7, 8, 1, 2, 0, 9, 9, 9]])
  pos = np.asarray(masks.training_positions(ids, 4, 0))
  np.testing.assert_array_equal(pos[0], [1, 1, 0, 1, 2, 3, 4, 2, 3, 4])
  np.testing.assert_array_equal(pos[1], [0, 1, 2, 3, 4, 5, 6, 4, 5, 6])


def test_staircase_and_decode():
  st = np.asarray(masks.staircase_mask(6, 4))
  want = np.array([[j // 4 <= i // 4 for j in range(6)] for i in range(6)])
  np.testing.assert_array_equal(st, want)
  dm = np.asarray(masks.decode_mask(np.array([[True, False, True]]), 2))
  np.testing.assert_array_equal(dm[0], [[1, 0, 1, 1, 1]] * 2)


def test_bad_layout():
  with pytest.raises(ValueError, match="prompt_len"):
    masks.training_batch_mask(np.zeros((1, 6), int), 1, 2, 0)
  with pytest.raises(ValueError, match="block_size"):
    masks.training_mask(2, 2, 0)
