"""Grading table on real shipped answers: (dataset, row, model response, expected)."""
import threading
import time

import pytest

from t3d_jax.data import datasets
from t3d_jax.evaluation import grading as gr

B = "The answer is $\\boxed{%s}$."

# (dataset, row index, model response, should be graded correct)
CASES = [
    # GSM8K: "#### N" reference (N may carry thousands commas in the file)
    ("gsm8k_test", 0, B % "18", True),
    ("gsm8k_test", 0, B % "\\$18", True),
    ("gsm8k_test", 0, B % "18.00", True),
    ("gsm8k_test", 0, B % "17", False),
    ("gsm8k_test", 1, "2 + 1 = 3 bolts.\n#### 3", True),          # '####' fallback
    ("gsm8k_test", 2, B % "70,000", True),
    ("gsm8k_test", 2, B % "70000", True),
    ("gsm8k_test", 2, B % "7000", False),
    ("gsm8k_test", 3, "First \\boxed{60} then finally \\boxed{540}", True),   # last box
    ("gsm8k_test", 3, "First \\boxed{540} then finally \\boxed{60}", False),
    ("gsm8k_test", 4, B % "20 \\text{ cups}", True),
    ("gsm8k_test", 5, B % "64", True),
    ("gsm8k_test", 10, B % "366", True),
    ("gsm8k_test", 100, "no boxed answer here: 175", False),
    # MATH500: fractions, \dfrac, \frac12 shorthand
    ("math500", 2, B % "\\dfrac{14}{3}", True),
    ("math500", 2, B % "14/3", True),
    ("math500", 2, B % "4\\frac{2}{3}", True),    # math_verify reads a mixed number
    ("math500", 2, B % "\\frac{14}{5}", False),
    ("math500", 162, B % "\\frac{17}{50}", True),
    ("math500", 162, B % "0.34", True),
    ("math500", 106, B % "\\frac{4}{3}", True),
    ("math500", 266, B % "0.33", True),
    ("math500", 11, B % "\\frac{3}{65}", False),
    # degrees and units
    ("math500", 7, B % "90", True),
    ("math500", 7, B % "90^{\\circ}", True),
    ("math500", 100, B % "145", True),
    ("math500", 100, B % "135^\\circ", False),
    ("math500", 166, B % "\\frac{270}{7}", True),
    ("math500", 301, B % "5.4", True),
    ("math500", 467, B % "15", True),
    ("math500", 242, B % "32348", True),
    ("math500", 459, B % "18.90", True),
    ("math500", 488, B % "36", True),
    # intervals and unions
    ("math500", 103, B % "(3, 4]", True),
    ("math500", 103, B % "[3, 4]", False),
    ("math500", 184, B % "(2, \\infty)", True),
    ("math500", 307, B % "(-\\infty,0]", True),
    ("math500", 383, B % "[-2, 7]", True),
    ("math500", 435, B % "(-\\infty,2)\\cup(3,\\infty)", True),
    ("math500", 435, B % "(-\\infty,2)\\cup(4,\\infty)", False),
    ("math500", 293, B % "\\left( \\frac35, \\frac83 \\right]", True),
    # tuples, lists, matrices
    ("math500", 0, B % "(3, \\frac{\\pi}{2})", True),
    ("math500", 0, B % "(3, \\pi)", False),
    ("math500", 60, B % "(6, 31, -1)", True),
    ("math500", 60, B % "(6, -1, 31)", False),
    ("math500", 144, B % "(15,-29)", True),
    ("math500", 25, B % "-2, 1", True),
    ("math500", 36, B % "3,5,7", True),
    ("math500", 99, B % "\\begin{pmatrix} -\\frac13 \\\\ \\frac23 \\\\ \\frac53 \\end{pmatrix}", True),
    # algebra, radicals, complex numbers, equations
    ("math500", 23, B % "5", True),
    ("math500", 8, B % "\\sqrt{117}", True),
    ("math500", 31, B % "11\\sqrt{2}", True),
    ("math500", 15, B % "-5i + 6", True),
    ("math500", 15, B % "6 + 5i", False),
    ("math500", 51, B % "x^5-x^4+x^3-x^2+x-1", True),
    ("math500", 98, B % "2(k+1)", True),
    ("math500", 53, B % "-\\pi/6", True),
    ("math500", 44, B % "\\frac{5}{4}", True),
    ("math500", 54, B % ".15", True),
    ("math500", 30, B % "52_8", True),
    # text and multiple-choice answers
    ("math500", 4, B % "\\text{Evelyn}", True),
    ("math500", 4, B % "Evelyn", True),
    ("math500", 4, B % "\\text{Angela}", False),
    ("math500", 97, B % "East", True),
    ("math500", 227, B % "C", True),
    ("math500", 227, B % "\\text{(D)}", False),
    ("math500", 358, B % "\\text{ellipse}", True),
    ("math500", 358, B % "\\text{parabola}", False),
    # \fbox and unbalanced / empty boxes
    ("math500", 3, "so \\fbox{9}", True),
    ("math500", 3, "so \\boxed{9", False),
    ("math500", 3, "\\boxed{9} but then \\boxed{9", False),
    ("math500", 3, "\\boxed{}", False),
]


@pytest.fixture(scope="module")
def answers():
  return {name: datasets.load_qa(name) for name in ("gsm8k_test", "math500")}


@pytest.mark.parametrize("name, idx, response, expected", CASES,
                         ids=[f"{n}-{i}-{k}" for k, (n, i, _, _) in enumerate(CASES)])
def test_grading_table(answers, name, idx, response, expected):
  res = gr.grade(response, answers[name][idx]["answer"], timeout_s=5)
  assert res.correct is expected, res
  assert res.reason


def test_table_size_and_balance():
  assert len(CASES) >= 40
  assert sum(not c[3] for c in CASES) >= 15


def test_reference_extraction():
  assert gr.reference_answer("x\n#### 1,080") == "1080"
  assert gr.reference_answer("  \\frac{14}{3} ") == "\\frac{14}{3}"
  assert gr.last_boxed("a \\boxed{\\frac{1}{2}} b") == ("\\frac{1}{2}", "")
  assert gr.last_boxed("\\boxed{\\{1,2\\}}") == ("\\{1,2\\}", "")
  assert gr.last_boxed("$\\boxed 5$") == ("5", "")
  assert gr.last_boxed("\\boxed{a}\\fbox{b}")[0] == "b"
  assert gr.normalize(".150") == gr.normalize("0.15") == "0.15"
  assert gr.normalize("\\$32,\\!348") == "32348"
  assert gr.normalize("\\left( 3, \\dfrac{\\pi}{2} \\right)") == "(3,\\frac{\\pi}{2})"


@pytest.mark.parametrize("response, reason", [
    ("\\boxed{\\frac{1}{2}", "unbalanced braces"),
    ("nothing", "no \\boxed{} answer"),
    ("\\boxed{ }", "empty"),
    (None, "not text"),
])
def test_bad_responses_graded_wrong_with_reason(response, reason):
  res = gr.grade(response, "\\frac{1}{2}")
  assert not res.correct and reason in res.reason


def _slow(*args):
  time.sleep(2)
  return True


def test_timeout_main_thread(monkeypatch):
  monkeypatch.setattr(gr, "_math_verify_equal", _slow)
  t0 = time.monotonic()
  res = gr.grade(B % "x+1", "y", timeout_s=0.2)
  assert time.monotonic() - t0 < 1.5
  assert not res.correct and "timeout after 0.2s" in res.reason


def test_timeout_and_grading_in_worker_thread(monkeypatch):
  out = {}

  def run():
    out["ok"] = gr.grade(B % "\\dfrac{1}{2}", "0.5", timeout_s=5)
    monkeypatch.setattr(gr, "_math_verify_equal", _slow)
    out["slow"] = gr.grade(B % "x+1", "y", timeout_s=0.2)
  t = threading.Thread(target=run)
  t.start()
  t.join(10)
  assert out["ok"].correct and out["ok"].reason == "math_verify: equal"
  assert not out["slow"].correct and "timeout" in out["slow"].reason


def test_real_math_verify_under_timeout_restores_alarm():
  import signal
  before = signal.getsignal(signal.SIGALRM)
  res = gr.grade(B % "\\sqrt{8}", "2\\sqrt{2}", timeout_s=5)
  assert res.correct and res.reason == "math_verify: equal"
  assert signal.getsignal(signal.SIGALRM) is before
  assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


@pytest.mark.parametrize("name", ["math500", "gsm8k_test"])
def test_every_shipped_reference_grades_itself(answers, name):
  bad = [r["index"] for r in answers[name]
         if not gr.grade(B % gr.reference_answer(r["answer"]), r["answer"]).correct]
  assert not bad


def test_neighbouring_answers_grade_wrong(answers):
  """Another problem's answer is (almost always) wrong: no false positives on 120 pairs
  whose normalised forms differ."""
  rows = answers["math500"][:121]
  false_pos = []
  for a, b in zip(rows, rows[1:]):
    ra, rb = gr.reference_answer(a["answer"]), gr.reference_answer(b["answer"])
    if gr.normalize(ra) != gr.normalize(rb) and gr.grade(B % rb, a["answer"]).correct:
      false_pos.append((ra, rb))
  assert not false_pos


def test_graders_by_name(tmp_path, monkeypatch):
  """exact, a user function by path (bool or (bool, reason)), one that raises (graded
  wrong, reason says so), and one-line errors for unknown names, failed imports and rows
  a grader cannot grade."""
  from t3d_jax.errors import InputError
  from t3d_jax.tasks import ERROR_PREFIX, TASKS, load_task
  exact = load_task("exact")
  assert exact("q", "Paris", "  paris \n").correct
  assert not exact("q", "Paris", "Paris, France").correct
  (tmp_path / "my_grader.py").write_text(
      "def ok(q, a, r):\n  return r.split()[0] in a.split('|')\n"
      "def why(q, a, r):\n  return r == a, 'compared ' + r\n"
      "def boom(q, a, r):\n  raise ValueError('bad row')\n"
      "def bad(q, a, r):\n  return 'yes'\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  assert load_task("my_grader:ok")("q", "cat|dog", "dog barks").correct
  g = load_task("my_grader:why")("q", "a", "b")
  assert not g.correct and g.reason == "compared b"
  g = load_task("my_grader:boom")("q", "a", "b")
  assert not g.correct and g.reason == f"{ERROR_PREFIX}ValueError: bad row"
  g = load_task("my_grader:bad")("q", "a", "b")
  assert not g.correct and g.reason.startswith(f"{ERROR_PREFIX}TypeError: returned str")
  names = ", ".join(TASKS)  # every built-in task, so a new one does not stale this line
  for name, match in [("chess", f"task.name='chess' is not one of {names} or "
                       "package.module:function"),
                      ("no_such_mod:f", "task.name='no_such_mod:f': cannot import it "
                       "\\(ModuleNotFoundError"),
                      ("my_grader:nope", "cannot import it \\(AttributeError")]:
    with pytest.raises(InputError, match=match):
      load_task(name)
  rows = [dict(question="ANM FOD", answer="x"), dict(question="k10 k3=", answer="y")]
  with pytest.raises(InputError, match="q.jsonl, question 2: task.name=words cannot grade "
                     "it \\(not a words-task question 'k10 k3='\\)"):
    load_task("words").check(rows, "q.jsonl")
  load_task("exact").check(rows, "q.jsonl")
