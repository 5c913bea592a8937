"""On-policy trajectory refresh (distill.refresh_every): the student's re-decoded
trajectories equal an independent naive decoder (transformers' Qwen3, no cache, plain
Python) run on the same params; the set each update trains on; the grader filter; and
through the CLI, a resumed run (with a killed run's stale refresh file left behind)
equals an uninterrupted one bit for bit."""
import json
import shutil
import types

import jax
import ml_collections
import numpy as np
import pytest
import torch

from hf_models import make_qwen3
from t3d_jax.convert import load_params
from t3d_jax.distill.data import Sample
from t3d_jax.distill.refresh import Refresher, period
from t3d_jax.errors import InputError
from t3d_jax.evaluation.grading import GradeResult
from t3d_jax.sampling import Batching, DecodeConfig, Decoder
from t3d_jax.tasks import Task
from test_sampler import naive_decode

VOCAB, MASK, EOS = 64, 63, 62
N_NEW = 10


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  d = tmp_path_factory.mktemp("qwen3_refresh")
  model = make_qwen3(d, vocab_size=VOCAB)
  with torch.no_grad():
    model.lm_head.weight.mul_(30.0)   # confidences spread, argmax far from ties
  model.save_pretrained(d)
  params, cfg = load_params(d)
  return model, params, cfg


def teacher_samples(n=6, seed=0):
  rs = np.random.RandomState(seed)
  return [Sample(tuple(rs.randint(0, MASK - 2, size=int(rs.randint(3, 12))).tolist()),
                 tuple(rs.randint(0, MASK - 2, size=5).tolist()), (1, 2, 3, 4, 5), row=k + 1)
          for k in range(n)]


class Tok:
  """Token ids as text (the grader's input): enough for a grader over ids."""
  def decode(self, ids, skip_special_tokens=True):
    return " ".join(map(str, ids))


def refresher(tmp_path, params_cfg, grader=None, samples=None):
  _, _, cfg = params_cfg
  samples = samples or teacher_samples()
  dcfg = DecodeConfig(block_size=4, denoising_steps=4, max_new_tokens=N_NEW, mask_id=MASK,
                      stop_ids=(EOS,))
  section = ml_collections.ConfigDict(dict(batch_size=4, width_multiple=4,
                                           data_parallel=False))
  questions = {s.row: (f"q{s.row}", "a") for s in samples}
  decoder = Decoder(cfg, dcfg, Batching.of(section))
  return Refresher(out=tmp_path / "refresh", every=2, samples=samples, decoder=decoder,
                   tokenizer=Tok(), seed=0, grader=grader,
                   questions=questions if grader else None, max_gen_length=8)


def test_refreshed_trajectories_equal_a_naive_decoder_and_each_update_gets_its_set(
    tiny, tmp_path):
  model, params, _ = tiny
  r = refresher(tmp_path, tiny)
  teacher = list(r.samples)
  state = types.SimpleNamespace(params=params)   # the loop passes the train state
  r(0, state)                                    # this run starts at update 0
  assert r.samples_for(0) == teacher and r.samples_for(1) == teacher
  r(1, state)                                    # not a refresh point
  assert not (tmp_path / "refresh").exists()
  r(2, state)
  rows = [json.loads(x) for x in (tmp_path / "refresh" / "2.jsonl").read_text().splitlines()]
  new = r.samples_for(2)
  assert r.samples_for(3) is new and r.last == {"refresh_replaced": 1.0}
  for k, (s, t) in enumerate(zip(new, teacher)):
    ref = naive_decode(model, list(t.prompt_ids), block_size=4, steps=4,
                       strategy="low_confidence_static", max_new=N_NEW, mask_id=MASK,
                       stop_ids=(EOS,))
    assert s.prompt_ids == t.prompt_ids and s.row == t.row
    assert list(s.response_ids) == ref["ids"][:8], f"sample {k}"   # max_gen_length 8
    assert list(s.step_map) == ref["step_map"][:8], f"sample {k}"
    assert rows[k]["sample"] == k and rows[k]["replaced"] and rows[k]["correct"] is None
  assert any(s.response_ids != t.response_ids for s, t in zip(new, teacher))

  # another process (a resumed run) reads the same sets from the files
  again = refresher(tmp_path, tiny)
  again(3, state)
  assert again.samples_for(1) == teacher and again.samples_for(3) == new
  # a killed run's refresh file past the resume point is removed (its updates are redone)
  shutil.copy(tmp_path / "refresh" / "2.jsonl", tmp_path / "refresh" / "4.jsonl")
  refresher(tmp_path, tiny)(2, state)
  assert sorted(p.name for p in (tmp_path / "refresh").iterdir()) == ["2.jsonl"]


def test_the_filter_keeps_only_trajectories_the_grader_passes(tiny, tmp_path):
  _, params, _ = tiny
  seen = []

  def even_rows(question, answer, response, timeout_s):
    seen.append((question, answer, response))
    ok = int(question[1:]) % 2 == 0
    return GradeResult(ok, "", None, answer)

  r = refresher(tmp_path, tiny, grader=Task("even", even_rows))
  teacher = list(r.samples)
  state = types.SimpleNamespace(params=params)
  r(0, state)
  r(2, state)
  new = r.samples_for(2)
  assert len(seen) == len(teacher) and seen[0][:2] == ("q1", "a")
  unfiltered = refresher(tmp_path / "all", tiny)
  unfiltered(0, state)
  unfiltered(2, state)
  for s, t, u in zip(new, teacher, unfiltered.samples_for(2)):
    assert s == (u if t.row % 2 == 0 else t)
    graded = seen[t.row - 1][2].split()   # the whole decode; training keeps 8 tokens
    assert graded[:8] == [str(x) for x in u.response_ids] and len(graded) >= len(u.response_ids)
  assert r.last == {"refresh_replaced": 0.5, "refresh_correct": 0.5}
  # the resumed run rebuilds the filtered set from the file
  again = refresher(tmp_path, tiny, grader=Task("even", even_rows))
  again(3, state)
  assert again.samples_for(3) == new


def test_period_errors_are_one_line():
  assert period(0, 10) == 0 and period(3, 10) == 30
  with pytest.raises(InputError, match="refresh_every=-1"):
    period(-1, 10)
  with pytest.raises(InputError, match="round_interval >= 1"):
    period(2, 0)


def test_refresh_through_the_cli_resumes_bit_exactly(tmp_path):
  from test_distill_mode import RUN, distill
  from tiny_setup import make_model_dir, write_trajectories
  root = tmp_path / "setup"
  model = make_model_dir(root)
  write_trajectories(root / "traj.jsonl", root / "tokenizer", n=8)
  args = ("--config.distill.max_steps=6", "--config.distill.refresh_every=1",
          "--config.decode.max_new_tokens=12", "--config.decode.batch_size=4",
          "--config.decode.width_multiple=16")
  a = tmp_path / "a"
  r = distill(a, model, root / "traj.jsonl", *args)
  assert r.returncode == 0, r.stderr[-4000:]
  ref = a / RUN / "refresh"
  assert sorted(p.name for p in ref.iterdir()) == ["2.jsonl", "4.jsonl"]  # not after 6
  rows = [json.loads(x) for x in (ref / "2.jsonl").read_text().splitlines()]
  assert len(rows) == 8 and all(x["replaced"] and len(x["response_ids"]) == len(x["step_map"])
                                for x in rows)
  metrics = [json.loads(x) for x in (a / RUN / "metrics.jsonl").read_text().splitlines()]
  assert "refresh_replaced" not in metrics[1] and metrics[2]["refresh_replaced"] == 1.0

  # killed after update 4's refresh file, before its checkpoint: resume from 2
  b = tmp_path / "b"
  shutil.copytree(a, b)
  for d in ("4", "6"):
    shutil.rmtree(b / RUN / "checkpoints" / d)
  shutil.rmtree(b / RUN / "model")
  (b / RUN / "refresh" / "4.jsonl").write_text("stale\n")
  r = distill(b, model, root / "traj.jsonl", *args)
  assert r.returncode == 0 and "resuming from step 2" in r.stderr, r.stderr[-4000:]
  assert (b / RUN / "refresh" / "4.jsonl").read_text() == (ref / "4.jsonl").read_text()
  x, _ = load_params(a / RUN / "model")
  y, _ = load_params(b / RUN / "model")
  for u, v in zip(jax.tree.leaves(x), jax.tree.leaves(y)):
    np.testing.assert_array_equal(np.asarray(u), np.asarray(v))

  # the same checkpoints resumed without the refresh: another run, refused in one line
  shutil.rmtree(b / RUN / "checkpoints" / "6")
  off = tuple(x for x in args if "refresh_every" not in x)
  r = distill(b, model, root / "traj.jsonl", *off)
  assert r.returncode == 2 and "Traceback" not in r.stderr
  assert "written by another run" in r.stderr and "distill.refresh_every: 1 -> 0" in r.stderr


def test_a_key_added_since_a_checkpoint_is_the_same_run_only_at_its_default():
  """Checkpoints recorded before distill.refresh_every existed: resumed at its default
  (off) they are the same run; with it on, another run (it would train on other data)."""
  from t3d_jax.config_base import library_defaults
  from t3d_jax.train.loop import _changed
  old = {"settings": {"distill": {"max_steps": 6}, "seed": 0}}
  lib = library_defaults()
  assert _changed(old, {"distill": {"max_steps": 6, "refresh_every": 0}, "seed": 0}, lib) == ""
  why = _changed(old, {"distill": {"max_steps": 6, "refresh_every": 2}, "seed": 0,
                       "refresh": {"batch_size": 4}}, lib)
  assert why.startswith("2 settings differ: ") and "distill.refresh_every: '<unset>' -> 2" in why
  assert "refresh.batch_size: '<unset>' -> 4" in why
