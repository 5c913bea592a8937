"""eval mode end to end through the CLI on two tiny models (base and a perturbed
"student"): per-sample JSONL, summaries, accuracy-vs-TPF PNG, TensorBoard, table, reuse
of finished settings; the timed decoder equals the rollout library; bad input."""
import json

import jax
import numpy as np
import pytest

from decode_setup import (DECODE_FLAGS, PNG_SIGNATURE, QUESTIONS, cli, load_config,
                          read_jsonl, signal_during_call, tiny_model, write_questions)
from t3d_jax.errors import InputError

N_NEW, N = 8, 8
TPF = (1, 4)
SETTINGS = [f"static_b4_tpf{t}" for t in TPF]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  from t3d_jax import checkpoint
  from t3d_jax.convert import load_params
  root = tiny_model(tmp_path_factory)
  tmp = tmp_path_factory.mktemp("eval_data")
  params, cfg = load_params(root / "model")
  noise = jax.tree.map(lambda x: x + 0.5 * np.random.RandomState(1).standard_normal(x.shape)
                       .astype(x.dtype), jax.device_get(params))
  student = checkpoint.save_model_dir(tmp / "student", noise, cfg,
                                      meta_dir=checkpoint.meta_dir_of(root / "model"))
  return root, student, write_questions(tmp / "q.jsonl", N)


def eval_flags(work, root, student, data, *extra):
  return (f"--config.workdir={work}", f"--config.eval.data={data}",
          f"--config.eval.models=('base={root / 'model'}', 'student={student}')",
          f"--config.eval.tokens_per_forward={TPF}", "--config.decode.batch_size=8",
          f"--config.decode.max_new_tokens={N_NEW}", *DECODE_FLAGS, *extra)


def test_eval_two_models_writes_everything_and_reuses_finished(setup, tmp_path):
  root, student, data = setup
  r = cli("eval", *eval_flags(tmp_path, root, student, data))
  assert r.returncode == 0, r.stderr[-4000:]
  out = tmp_path / "eval"
  from t3d_jax.data.tokenizer import load_tokenizer
  tok = load_tokenizer(root / "tokenizer")
  summary = json.loads((out / "summary.json").read_text())
  assert summary["n"] == N and summary["decode"]["temperature"] == 0.1
  res = {(x["model"], x["setting"]): x for x in summary["results"]}
  assert sorted(res) == sorted((m, s) for m in ("base", "student") for s in SETTINGS)
  for (model, setting), x in res.items():
    rows = read_jsonl(out / "samples" / model / f"{setting}.jsonl")
    assert [row["index"] for row in rows] == list(range(N))
    for row, (q, ans) in zip(rows, QUESTIONS):
      assert (row["question"], row["answer"]) == (q, ans)
      assert 1 <= row["response_length"] == len(row["step_map"]) <= N_NEW
      assert isinstance(row["correct"], bool) and isinstance(row["reason"], str)
      assert row["nfe"] >= 1 and isinstance(row["full_output"], str)
      assert len(row["response_ids"]) == row["response_length"]
      assert row["output"] == tok.decode(row["response_ids"], skip_special_tokens=True)
      assert row["full_output"] == tok.decode(row["response_ids"], skip_special_tokens=False)
      assert not any(t in row["output"] for t in tok.all_special_tokens)
    assert x["n"] == N and 0.0 <= x["accuracy"] <= 1.0
    assert x["accuracy"] == sum(row["correct"] for row in rows) / N
    assert x["mean_response_length"] == sum(row["response_length"] for row in rows) / N
    assert x["nfe_total"] == sum(row["nfe"] for row in rows)
    assert x["tpf"] == pytest.approx(x["tokens_total"] / x["nfe_total"])
    assert x["tokens_per_s"] > 0 and x["compile_s"] >= 0
    assert x["denoising_steps"] == 4 // x["tokens_per_forward"]
    assert x["tpf"] <= x["tokens_per_forward"] + 1e-9
  for model in ("base", "student"):  # 4 tokens per forward: far fewer forwards
    assert res[(model, SETTINGS[1])]["nfe_total"] < 0.5 * res[(model, SETTINGS[0])]["nfe_total"]
  base_ids = read_jsonl(out / "samples" / "base" / f"{SETTINGS[0]}.jsonl")
  stud_ids = read_jsonl(out / "samples" / "student" / f"{SETTINGS[0]}.jsonl")
  assert [x["full_output"] for x in base_ids] != [x["full_output"] for x in stud_ids]
  assert set(summary["aup"]) == {"base", "student"}  # one curve per model
  png = out / "accuracy_vs_tpf.png"
  assert png.read_bytes()[:8] == PNG_SIGNATURE and png.stat().st_size > 1000
  assert list((out / "tb").glob("events.out.tfevents.*"))
  table = r.stdout.splitlines()
  assert any("temperature 0.1" in x for x in table)
  for model, setting in res:
    assert any(x.split()[:2] == [model, setting] for x in table), r.stdout

  # rerun: every (model, setting) is reused, the results are the same
  before = {p: p.read_bytes() for p in (out / "samples").rglob("*.jsonl")}
  r = cli("eval", *eval_flags(tmp_path, root, student, data))
  assert r.returncode == 0, r.stderr[-4000:]
  assert r.stderr.count("finished before, reused") == 4
  assert {p: p.read_bytes() for p in (out / "samples").rglob("*.jsonl")} == before
  again = json.loads((out / "summary.json").read_text())
  assert again["results"] == summary["results"]


def test_a_threshold_sweep_is_its_own_curve_and_its_ends_equal_the_static_settings(setup,
                                                                                   tmp_path):
  """eval.thresholds: one low_confidence_dynamic setting per threshold (at most b steps per
  block). Nothing passes threshold 2: the one-token-per-step static setting; everything
  passes -1: one step per block, the 4-tokens-per-forward static setting (same draws)."""
  root, student, data = setup
  r = cli("eval", *eval_flags(tmp_path, root, student, data,
                              "--config.eval.thresholds=(2.0, 0.5, -1.0)"))
  assert r.returncode == 0, r.stderr[-4000:]
  out = tmp_path / "eval"
  summary = json.loads((out / "summary.json").read_text())
  res = {x["setting"]: x for x in summary["results"] if x["model"] == "base"}
  sweep = ["dynamic_b4_tpf1_th2", "dynamic_b4_tpf1_th0.5", "dynamic_b4_tpf1_th-1"]
  assert sorted(res) == sorted(SETTINGS + sweep)
  assert [res[s]["threshold"] for s in sweep] == [2.0, 0.5, -1.0]
  assert "threshold" not in res[SETTINGS[0]]
  assert set(summary["aup"]) == {f"{m}/{c}" for m in ("base", "student")
                                 for c in ("static", "thresholds")}
  rows = {s: read_jsonl(out / "samples" / "base" / f"{s}.jsonl") for s in res}
  for swept, static in ((sweep[0], SETTINGS[0]), (sweep[2], SETTINGS[1])):
    assert [(x["response_ids"], x["step_map"], x["nfe"]) for x in rows[swept]] == \
        [(x["response_ids"], x["step_map"], x["nfe"]) for x in rows[static]]
  assert res[sweep[2]]["nfe_total"] <= res[sweep[1]]["nfe_total"] <= res[sweep[0]]["nfe_total"]
  assert "dynamic_b4_tpf1_th0.5" in r.stdout


def test_timed_decode_equals_one_part_decode(setup):
  from t3d_jax.convert import load_model
  from t3d_jax.data import tokenizer as tok_lib
  from t3d_jax.sampling import DecodeConfig, Decoder, DecodeStats, batched
  root, _, _ = setup
  model = load_model(root / "model")
  c = load_config("eval")
  c.decode.max_new_tokens, c.decode.max_length = 6, 192
  dcfg = DecodeConfig.from_config(c.decode, model.ids, denoising_steps=2)
  prompts = tok_lib.encode(model.tokenizer, [tok_lib.math_prompt(model.tokenizer, q)
                                             for q, _ in QUESTIONS[:5]])
  key = jax.random.key(3)
  stats = DecodeStats()
  ours = batched.decode(model.params, model.cfg, prompts, dcfg, key, batch_size=2,
                        width_multiple=192, stats=stats)
  ref = batched.decode_part(model.params, model.cfg, prompts, dcfg, key, batch_size=2,
                            width_multiple=192)
  assert ours == ref
  assert stats.batches == 3 and stats.decode_s > 0
  # decode.data_parallel: each batch split over the 8 (fake) local devices, same results
  c.decode.data_parallel, c.decode.batch_size, c.decode.width_multiple = True, 8, 192
  decoder = Decoder.from_config(c.decode, model.ids, model.cfg, denoising_steps=2)
  assert decoder.mesh.shape == {"data": jax.local_device_count()} == {"data": 8}
  first = DecodeStats()
  sharded = decoder.decode(model.params, prompts, key, stats=first)
  assert sharded == batched.decode_part(model.params, model.cfg, prompts, dcfg, key,
                                        batch_size=8, width_multiple=192)
  assert decoder.executables.settings == 1  # one compiled decoder, held by the Decoder
  # another decoder given those compilations (eval's next model) compiles nothing
  again = Decoder.from_config(c.decode, model.ids, model.cfg, denoising_steps=2,
                              executables=decoder.executables)
  second = DecodeStats()
  assert again.decode(model.params, prompts, key, stats=second) == sharded
  assert first.compile_s > 0 and second.compile_s == 0
  c.decode.batch_size = 4
  with pytest.raises(InputError, match="batch_size=4 is not a multiple of the 8 local"):
    Decoder.from_config(c.decode, model.ids, model.cfg)


def _config(tmp_path, **eval_kw):
  c = load_config("eval")
  c.workdir = str(tmp_path)
  c.eval.update(eval_kw)
  return c


@pytest.mark.parametrize("case", ["tpf", "missing", "dup", "empty"])
def test_eval_bad_input_is_one_clear_error(setup, tmp_path, case):
  from t3d_jax.modes import eval as eval_mode
  root, student, data = setup
  models = (f"base={root / 'model'}",)
  kw = dict(data=str(data), models=models)
  if case == "tpf":
    kw.update(tokens_per_forward=(1, 3))
    match = "tokens_per_forward: 3 does not divide decode.block_size=4"
  elif case == "missing":
    kw.update(models=models + (f"t3d={tmp_path / 'gone'}",))
    match = "model 't3d': .*gone does not exist"
  elif case == "dup":
    kw.update(models=models + (f"base={student}",))
    match = "model name 'base' given twice"
  else:
    (tmp_path / "e.jsonl").write_text("")
    kw.update(data=str(tmp_path / "e.jsonl"))
    match = "e.jsonl: empty file"
  with pytest.raises(InputError, match=match):
    eval_mode.run(_config(tmp_path, **kw))
  assert not (tmp_path / "eval").exists()


def test_sigterm_stops_between_runs_and_the_rerun_reuses_the_finished_one(setup, tmp_path,
                                                                          monkeypatch):
  """SIGTERM during the first of two (model, setting) runs: it finishes and is written,
  the eval stops (exit code 143); the rerun reuses it and decodes only the second."""
  import signal
  from t3d_jax.errors import Interrupted
  from t3d_jax.modes import eval as eval_mode
  from t3d_jax.sampling import batched
  root, student, data = setup
  c = _config(tmp_path, data=str(data), models=(f"base={root / 'model'}",),
              tokens_per_forward=TPF)
  c.decode.max_new_tokens = N_NEW
  signal_during_call(monkeypatch, batched, "decode", 1, signal.SIGTERM)
  calls = []
  with pytest.raises(Interrupted, match="eval: stopped by SIGTERM after 1 of 2") as e:
    eval_mode.run(c)
  assert e.value.exit_code == 128 + signal.SIGTERM
  done = sorted(p.name for p in (tmp_path / "eval" / "samples" / "base").iterdir())
  assert done == [f"{SETTINGS[0]}.jsonl", f"{SETTINGS[0]}.summary.json"]
  monkeypatch.undo()
  real = batched.decode
  monkeypatch.setattr(batched, "decode", lambda *a, **kw: calls.append(1) or real(*a, **kw))
  eval_mode.run(c)
  assert len(calls) == 1  # the finished run was reused, only the second decoded
  assert (tmp_path / "eval" / "summary.json").is_file()


@pytest.mark.parametrize("task, match", [
    ("words", r"q.jsonl, question 1: task.name=words cannot grade it \(not a words-task"),
    ("no_such_module:grade", "task.name='no_such_module:grade': cannot import it")])
def test_a_grader_that_cannot_grade_stops_before_decoding(setup, tmp_path, task, match,
                                                          monkeypatch):
  from t3d_jax.modes import eval as eval_mode
  from t3d_jax.sampling import batched
  root, student, data = setup
  c = _config(tmp_path, data=str(data), models=(f"base={root / 'model'}",))
  c.task.name = task
  monkeypatch.setattr(batched, "decode", lambda *a, **k: pytest.fail("decoded"))
  with pytest.raises(InputError, match=match):
    eval_mode.run(c)
  assert not (tmp_path / "eval").exists()


def test_a_user_grader_by_path_and_one_that_raises(setup, tmp_path, monkeypatch, capsys):
  """task.name=module:function grades every row; when it raises, the rows are graded wrong
  with the exception as reason, the run goes on and the count is shown and recorded."""
  from t3d_jax.modes import eval as eval_mode
  root, student, data = setup
  (tmp_path / "user_grader.py").write_text(
      "def grade(q, a, r):\n  if q.startswith('What is'):\n    raise ValueError('odd')\n"
      "  return len(r) > 0, 'non-empty'\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  c = _config(tmp_path, data=str(data), models=(f"base={root / 'model'}",),
              tokens_per_forward=(4,))
  c.decode.max_new_tokens = N_NEW
  c.task.name = "user_grader:grade"
  eval_mode.run(c)
  rows = read_jsonl(tmp_path / "eval" / "samples" / "base" / "static_b4_tpf4.jsonl")
  raised = [r for r in rows if r["reason"] == "grader raised: ValueError: odd"]
  assert [r["question"].startswith("What is") for r in rows] == [r in raised for r in rows]
  assert raised and all(not r["correct"] for r in raised)
  assert all(r["reason"] == "non-empty" for r in rows if r not in raised)
  s = json.loads((tmp_path / "eval" / "summary.json").read_text())["results"][0]
  assert s["grader"] == "user_grader:grade" and s["grader_errors"] == len(raised)
  assert s["accuracy"] == sum(r["correct"] for r in rows) / len(rows)
  assert f"the grader raised on {len(raised)} of {len(rows)} rows" in capsys.readouterr().err
