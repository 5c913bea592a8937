"""t3d_jax.api, each call on a tiny real model: generate equals what eval decodes for the
same prompts, rollout -> distill -> evaluate write what the CLI writes, and bad input is
one InputError."""
import json

import jax
import numpy as np
import pytest

from decode_setup import QUESTIONS, read_jsonl, tiny_model, write_questions
from t3d_jax import api
from t3d_jax.errors import InputError

N = 8
SETTINGS = {"decode.max_new_tokens": 12, "decode.max_length": 192,
            "decode.width_multiple": 192, "decode.batch_size": 8,
            "distill.length_bucket": 8, "distill.global_batch": 8,
            "distill.micro_batch": 8, "distill.round_interval": 1,
            "distill.async_checkpoint": False, "optim.warmup_steps": 1}


def grade_nonempty(question, answer, response):
  """A user grader: any non-empty response counts."""
  del question, answer
  return bool(response.strip()), "nonempty" if response.strip() else "empty"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tiny_model(tmp_path_factory)
  data = write_questions(tmp_path_factory.mktemp("api_data") / "q.jsonl", N)
  return api.load(root / "model", name="base", **SETTINGS), data


def test_generate_equals_eval_and_knobs_act(setup, tmp_path):
  base, data = setup
  report = api.evaluate({"base": base}, data, grader="math", tokens_per_forward=(1, 4),
                        workdir=tmp_path)
  assert [(r["model"], r["tokens_per_forward"]) for r in report.results] == \
      [("base", 1), ("base", 4)]
  assert "static_b4_tpf4" in report.table and str(report) == report.table
  questions = [q for q, _ in QUESTIONS[:N]]
  for t in (1, 4):
    rows = read_jsonl(tmp_path / "eval/samples/base" / f"static_b4_tpf{t}.jsonl")
    gen = base.generate(questions, tokens_per_forward=t)  # the config's T 0.1, seed 0
    assert [g.ids for g in gen] == [r["response_ids"] for r in rows]
    assert [g.text for g in gen] == [r["output"] for r in rows]
    assert [g.step_map for g in gen] == [r["step_map"] for r in rows]
    assert [g.nfe for g in gen] == [r["nfe"] for r in rows]
    if t == 4:  # every decoder of a model shares its compilations (a second call compiles none)
      assert base.decoder(4).executables is base.decoder(1).executables
      assert base.decoder().executables.settings == 2  # the two static settings decoded so far
    if t == 4:  # decode.data_parallel: each batch split over the 8 devices, same tokens
      split = api.load(base.path, name="base", **SETTINGS, **{"decode.data_parallel": True})
      assert split.decoder().mesh.size == jax.local_device_count() == 8
      assert [g.ids for g in split.generate(questions, tokens_per_forward=t)] == \
          [g.ids for g in gen]
  one = base.generate(questions[2], temperature=0.0)  # one prompt, greedy: no rng
  assert len(one) == 1 and one[0].ids == base.generate(questions[2], temperature=0.0,
                                                       seed=7)[0].ids
  _, ids = base.prompts([questions[2]])
  assert base.generate(ids, temperature=0.0)[0].ids == one[0].ids  # token ids as given
  fast = base.generate(questions[2], temperature=0.0, tokens_per_forward=4)[0]
  assert fast.nfe < one[0].nfe and len(set(fast.step_map)) == fast.nfe  # a block a step
  with pytest.raises(InputError, match="tokens_per_forward=3 does not divide "
                     "decode.block_size=4"):
    base.generate("x", tokens_per_forward=3)
  with pytest.raises(InputError, match="strategy 'fastest' is not one of"):
    base.generate("x", strategy="fastest")
  with pytest.raises(InputError, match="config distill.max_stepz: not a config key"):
    api.load(base.path, **{"distill.max_stepz": 3})


def test_rollout_distill_evaluate(setup, tmp_path):
  base, data = setup
  w = tmp_path / "w"
  traj = api.rollout(base, data, w)
  assert traj == w / "trajectories.jsonl" and len(read_jsonl(traj)) == N
  student = api.distill(base, traj, w, name="s1", distill__max_steps=2)
  assert student.path == str(w / "distill/s1/model") and student.name == "s1"
  assert read_jsonl(w / "distill/s1/metrics.jsonl")[-1]["step"] == 2
  assert student.generate("What is 2 + 3?")[0].nfe > 0
  on_disk = api.load(student.path, config=base.config)  # the params returned in memory
  assert jax.tree.all(jax.tree.map(lambda a, b: bool((np.asarray(a) == np.asarray(b)).all()),
                                   student.params, on_disk.params))
  assert student.cfg == on_disk.cfg
  report = api.evaluate([base, student], data, grader=grade_nonempty, tokens_per_forward=(4,),
                        workdir=tmp_path / "e")
  assert {r["model"] for r in report.results} == {"base", "s1"}
  for r in report.results:
    assert r["grader"] == "test_api:grade_nonempty"
    rows = read_jsonl(report.output_dir / "samples" / r["model"] / f"{r['setting']}.jsonl")
    assert r["accuracy"] == sum(bool(x["output"].strip()) for x in rows) / len(rows)
  summary = json.loads((report.output_dir / "summary.json").read_text())
  assert summary["aup"] == report.aup
  with pytest.raises(InputError, match="must be a task name or a module-level function"):
    api.evaluate([base], data, grader=lambda q, a, r: True, workdir=tmp_path / "x")
