"""A teacher worth distilling, through the real CLI on a task of our own (sums, graders
written here): pretraining that measures held-out accuracy and stops at its target (and
stays stopped on a rerun), the held-out accuracy equal to an independent decode of the
same questions (eval mode) graded by the same function; the rollout's teacher accuracy,
its gate and --config.force; distill.filter_correct trains on exactly the trajectories
the grader passes; refresh for a method other than T3D."""
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from t3d_jax.evaluation import heldout, teacher
from t3d_jax.errors import InputError
from t3d_jax.tasks import Task, load_task
from t3d_jax.evaluation.grading import GradeResult

REPO = Path(__file__).resolve().parents[1]
GRADERS = '''
def yes(question, answer, response):
  return True

def no(question, answer, response):
  return False

def mixed(question, answer, response):
  """Right for some rows and wrong for others, whatever a barely trained model says."""
  return (len(response.strip()) + int(question[0])) % 2 == 0

def right_sum(question, answer, response):
  return response.strip().rstrip(".") == answer
'''
TINY = ("--config.arch.hidden_size=32", "--config.arch.intermediate_size=64",
        "--config.arch.num_heads=2", "--config.arch.num_kv_heads=1",
        "--config.arch.head_dim=16", "--config.pretrain.global_batch=32",
        "--config.pretrain.micro_batch=32", "--config.pretrain.checkpoint_every=4",
        "--config.pretrain.async_checkpoint=False", "--config.decode.batch_size=32",
        "--config.decode.max_new_tokens=8", "--config.decode.temperature=0.0",
        "--config.rollout.limit=32", "--config.distill.max_gen_length=8",
        "--config.distill.max_steps=2", "--config.distill.global_batch=16",
        "--config.distill.micro_batch=16", "--config.distill.checkpoint_every=2",
        "--config.pretrain.eval_questions=16", "--config.rollout.min_teacher_accuracy=0")


def cli(cwd, work, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="",
             JAX_COMPILATION_CACHE_DIR=os.environ.get("JAX_COMPILATION_CACHE_DIR",
                                                      "/tmp/t3d_jax_test_cache"))
  return subprocess.run([sys.executable, "-m", "t3d_jax.main", "--config",
                         str(REPO / "configs/own_task.py"), f"--config.workdir={work}",
                         *TINY, *args], cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=900)


def sums(n, seed=0):
  rng = random.Random(seed)
  return [dict(question=f"{a}+{b}", answer=str(a + b))
          for a, b in ((rng.randrange(10), rng.randrange(10)) for _ in range(n))]


def write_rows(path: Path, rows) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("teacher")
  (d / "graders.py").write_text(GRADERS)
  rows = sums(300)
  write_rows(d / "data" / "train.jsonl", rows[:280])
  write_rows(d / "data" / "test.jsonl", rows[280:])
  return d


def workdir(task_dir, name) -> Path:
  w = task_dir / name
  (w / "data").mkdir(parents=True)
  for f in ("train.jsonl", "test.jsonl"):
    (w / "data" / f).write_bytes((task_dir / "data" / f).read_bytes())
  return w


def metrics(w, stage="pretrain"):
  return [json.loads(x) for x in (w / stage / "metrics.jsonl").read_text().splitlines()]


def test_pretraining_stops_at_its_target_and_stays_stopped(task_dir):
  w = workdir(task_dir, "stop")
  args = ("--config.pipeline.stages=('tokenizer','pretrain')", "--config.task.name=graders:yes",
          "--config.pretrain.max_steps=12", "--config.pretrain.eval_every=4",
          "--config.pretrain.target_accuracy=0.9")
  r = cli(task_dir, w, *args)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "[pretrain] 4 updates" in r.stdout and "target 90 %: reached, stopped early" in r.stdout
  m = metrics(w)
  assert m[-1]["step"] == 4 and m[-1][heldout.FIGURE] == 1.0
  # held out: the last 16 distinct questions and every row asking one of them
  rows = [json.loads(x) for x in (w / "data" / "train.jsonl").read_text().splitlines()]
  train, held = heldout.split(rows, 16, "train")
  assert len(held) == 16 and f"{len(train)} pairs" in r.stdout and len(train) < 280 - 16 + 1
  before = (w / "model" / "params.sha256").read_text()
  r = cli(task_dir, w, *args)   # a rerun: nothing more to train
  assert r.returncode == 0 and "[pretrain] 4 updates" in r.stdout, r.stderr[-3000:]
  assert (w / "model" / "params.sha256").read_text() == before
  assert len(metrics(w)) == len(m)


def test_heldout_accuracy_equals_an_eval_of_the_same_questions(task_dir):
  w = workdir(task_dir, "measure")
  r = cli(task_dir, w, "--config.pipeline.stages=('tokenizer','pretrain')",
          "--config.task.name=graders:right_sum", "--config.pretrain.max_steps=40",
          "--config.pretrain.eval_every=20", "--config.pretrain.target_accuracy=1.0")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "NOT reached by the cap pretrain.max_steps" in r.stdout
  last = metrics(w)[-1]
  assert last["step"] == 40 and heldout.FIGURE in last
  decoded = [json.loads(x) for x in (w / "pretrain/heldout/40.jsonl").read_text().splitlines()]
  assert len({d["output"] for d in decoded}) > 1, "a model that says one thing checks little"
  rows = [json.loads(x) for x in (w / "data" / "train.jsonl").read_text().splitlines()]
  _, held = heldout.split(rows, 16, "train")
  write_rows(w / "held.jsonl", held)
  r = cli(task_dir, w, "--config.mode=eval", "--config.task.name=graders:right_sum",
          f"--config.eval.data={w / 'held.jsonl'}", "--config.eval.tokens_per_forward=(1,)",
          "--config.eval.models=('base={workdir}/model',)")
  assert r.returncode == 0, r.stderr[-3000:]
  (res,) = json.loads((w / "eval" / "summary.json").read_text())["results"]
  samples = [json.loads(x) for x in
             (w / "eval" / "samples" / "base" / f"{res['setting']}.jsonl").open()]
  assert [s["question"] for s in samples] == [d["question"] for d in decoded]
  assert [s["output"] for s in samples] == [d["output"] for d in decoded]
  assert res["accuracy"] == pytest.approx(last[heldout.FIGURE])


def test_the_rollout_measures_the_teacher_and_stops_a_failing_one(task_dir):
  w = workdir(task_dir, "gate")
  base = ("--config.pipeline.stages=('tokenizer','pretrain','rollout','distill')",
          "--config.pretrain.max_steps=4", "--config.rollout.min_teacher_accuracy=0.5")
  r = cli(task_dir, w, *base, "--config.task.name=graders:no")
  assert r.returncode == 2, r.stderr[-3000:]
  line = r.stderr.strip().splitlines()[-1]
  assert line.startswith("error: rollout: teacher accuracy 0.0 % (0 of 32 samples graded "
                         "correct by task graders:no), below rollout.min_teacher_accuracy=0.5")
  assert "Traceback" not in r.stderr and "--config.force=True" in line
  assert json.loads((w / "trajectories.meta.json").read_text())["teacher"] == dict(
      measured=True, task="graders:no", samples=32, correct=0, accuracy=0.0)
  assert not (w / "distill").exists()
  r = cli(task_dir, w, *base, "--config.task.name=graders:no", "--config.force=True")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "teacher accuracy 0.0 %" in r.stdout and (w / "distill/student/model").is_dir()


def test_filter_correct_trains_on_the_graded_trajectories_and_refresh_serves_any_method(
    task_dir):
  w = workdir(task_dir, "filter")
  r = cli(task_dir, w, "--config.pipeline.stages=('tokenizer','pretrain','rollout')",
          "--config.pretrain.max_steps=4", "--config.task.name=graders:mixed")
  assert r.returncode == 0, r.stderr[-3000:]
  rows = [json.loads(x) for x in (w / "trajectories.jsonl").read_text().splitlines()]
  even = sum((len(o.strip()) + int(row["question"][0])) % 2 == 0
             for row in rows for o in row["output"])
  assert 0 < even < 32, "the check needs both kinds"
  assert f"teacher accuracy {100 * even / 32:.1f} %" in r.stdout
  r = cli(task_dir, w, "--config.mode=distill", "--config.task.name=graders:mixed",
          "--config.distill.filter_correct=True", "--config.distill.method=sft",
          "--config.distill.refresh_every=1", "--config.distill.round_interval=1",
          "--config.distill.refresh_filter=False", "--config.distill.global_batch=8",
          "--config.distill.micro_batch=8")
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"verified trajectories: {even} of 32 graded correct by task graders:mixed" in r.stdout
  refreshed = (w / "distill/student/refresh/1.jsonl").read_text().splitlines()
  assert len(refreshed) == even   # the sft run re-decoded the kept samples' prompts
  r = cli(task_dir, w, "--config.mode=distill", "--config.task.name=graders:no",
          "--config.distill.filter_correct=True", "--config.distill.name=none")
  assert r.returncode == 2 and "none of its 32 trajectories is graded correct" in r.stderr


def _rows_file(path, rows):
  return write_rows(path, [dict(question=q, answer=a, output=outs) for q, a, outs in rows])


def test_measure_and_check_without_the_cli(tmp_path):
  grader = Task("first", lambda q, a, r, t: GradeResult(r == a, "", r, a))
  p = _rows_file(tmp_path / "t.jsonl", [("q1", "x", ["x", "y"]), ("q2", "z", ["z", "z"])])
  m = teacher.measure(p, grader)
  assert m == dict(measured=True, task="first", samples=4, correct=3, accuracy=0.75)
  teacher.check(m, 0.75, False, p)               # at the minimum: goes on
  with pytest.raises(teacher.TeacherError, match="teacher accuracy 75.0 % .* below"):
    teacher.check(m, 0.8, False, p)
  teacher.check(m, 0.8, True, p)                  # forced
  none = teacher.measure(_rows_file(tmp_path / "n.jsonl", [("q", "", ["a"])]), grader)
  assert none == dict(measured=False, why="the data has no answers")
  with pytest.raises(teacher.TeacherError, match="not measured .*cannot be checked"):
    teacher.check(none, 0.5, False, p)
  teacher.check(none, 0.0, False, p)              # report only
  wrong = teacher.measure(p, load_task("words"))  # not words questions: not measured
  assert not wrong["measured"] and "cannot grade it" in wrong["why"]
  with pytest.raises(InputError, match=r"min_teacher_accuracy=1.5: must be in \[0, 1\]"):
    teacher.check_minimum(1.5)


@pytest.mark.parametrize("every,target,msg", [
    (-1, 0.0, "eval_every=-1: must be >= 0"),
    (0, 0.5, "target_accuracy=0.5 needs pretrain.eval_every > 0"),
    (5, 1.5, "target_accuracy=1.5: must be in [0, 1]"),
])
def test_heldout_settings_errors(every, target, msg):
  with pytest.raises(InputError, match=msg.replace("[", r"\[").replace("]", r"\]")):
    heldout.check_settings(every, target)


def test_heldout_split_takes_the_last_distinct_questions():
  rows = [dict(question=q, answer="") for q in "a b a c d c e f g h".split()]
  train, held = heldout.split(rows, 2, "f")
  assert [r["question"] for r in held] == ["g", "h"]
  assert [r["question"] for r in train] == list("abacdcef")
  train, held = heldout.split(rows, 5, "f")   # at most a quarter of the 8 questions
  assert [r["question"] for r in held] == ["g", "h"]
  with pytest.raises(InputError, match="2 distinct questions: too few to hold some out"):
    heldout.split(rows[:3], 1, "f")


def test_sigterm_during_measured_pretraining_resumes_bit_exactly(task_dir):
  """SIGTERM between evaluations: the resumed run's model and held-out figures equal an
  uninterrupted run's."""
  import signal
  import time
  args = ("--config.pipeline.stages=('tokenizer','pretrain')",
          "--config.task.name=graders:right_sum", "--config.pretrain.max_steps=24",
          "--config.pretrain.eval_every=4", "--config.pretrain.checkpoint_every=1000")
  whole = workdir(task_dir, "whole")
  r = cli(task_dir, whole, *args)
  assert r.returncode == 0, r.stderr[-3000:]
  w = workdir(task_dir, "killed")
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  p = subprocess.Popen([sys.executable, "-m", "t3d_jax.main", "--config",
                        str(REPO / "configs/own_task.py"), f"--config.workdir={w}", *TINY,
                        *args], cwd=task_dir, env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while time.time() < deadline and p.poll() is None:
    m = w / "pretrain" / "metrics.jsonl"
    if m.is_file() and len(m.read_text().splitlines()) >= 2:
      break
    time.sleep(0.05)
  assert p.poll() is None, "the run ended before it could be signalled"
  p.send_signal(signal.SIGTERM)
  _, err = p.communicate(timeout=120)
  assert p.returncode == 128 + signal.SIGTERM, err[-3000:]
  r = cli(task_dir, w, *args)
  assert r.returncode == 0 and "pretrain: resuming from step" in r.stderr, r.stderr[-3000:]
  assert (w / "model/params.sha256").read_text() == (whole / "model/params.sha256").read_text()
  figures = lambda d: [(m["step"], m[heldout.FIGURE]) for m in metrics(d)  # noqa: E731
                       if heldout.FIGURE in m]
  assert figures(w) == figures(whole) and [s for s, _ in figures(w)] == [4, 8, 12, 16, 20, 24]
