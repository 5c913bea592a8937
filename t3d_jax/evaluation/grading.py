"""Math answer grading: last ``\\boxed{...}``, GSM8K ``#### N`` references, normalised
string equality, then ``math_verify`` symbolic equality under a time limit.

:func:`grade` never raises: a response without a boxed answer, a boxed answer with
unbalanced braces, a reference or prediction that cannot be parsed, a math_verify
timeout, any exception inside the grader: each is graded wrong, with the reason recorded
in :class:`GradeResult`. One bad sample never stops an evaluation.

Time limit. math_verify's own timeouts use ``signal.alarm`` (whole seconds, main thread
only). :func:`grade` instead disables them and applies its own limit around parse +
verify together: in the main thread a ``setitimer`` alarm (sub-second, an exception
derived from BaseException so that math_verify's ``except Exception`` cannot swallow it,
previous handler and timer restored); in any other thread the work runs in a daemon
thread joined with a timeout, and a sample that overruns is graded wrong (the stray
thread finishes or dies with the process; sympy cannot be interrupted from outside).
"""
from __future__ import annotations

import dataclasses
import logging
import re
import signal
import threading
import time
from typing import Callable, Optional

BOX_COMMANDS = ("\\boxed", "\\fbox")


@dataclasses.dataclass(frozen=True)
class GradeResult:
  correct: bool
  reason: str                   # why: "normalised string match", "math_verify: not equal", ...
  prediction: Optional[str]     # the extracted answer (None when none could be extracted)
  reference: str                # the reference answer compared against


# ----------------------------------------------------------------------------- extraction


def _match_brace(text: str, open_at: int) -> int:
  """Index of the ``}`` closing the ``{`` at ``open_at``; -1 if unbalanced. Escaped
  braces (``\\{``, ``\\}``) are content, not structure."""
  depth = 0
  i = open_at
  while i < len(text):
    c = text[i]
    if c == "\\":
      i += 2
      continue
    if c == "{":
      depth += 1
    elif c == "}":
      depth -= 1
      if depth == 0:
        return i
    i += 1
  return -1


def last_boxed(text: str) -> tuple[Optional[str], str]:
  """Content of the LAST ``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces), or
  ``\\boxed 5`` without braces. Returns ``(content, "")`` or ``(None, reason)``."""
  if not isinstance(text, str):
    return None, f"response is {type(text).__name__}, not text"
  start, cmd = max((text.rfind(c), c) for c in BOX_COMMANDS)
  while start >= 0 and text[start + len(cmd):start + len(cmd) + 1].isalpha():
    # e.g. "\boxedx" is another macro; look further left.
    start, cmd = max((text.rfind(c, 0, start), c) for c in BOX_COMMANDS)
  if start < 0:
    return None, "no \\boxed{} answer in response"
  i = start + len(cmd)
  while i < len(text) and text[i] in " \t":
    i += 1
  if i < len(text) and text[i] == "{":
    end = _match_brace(text, i)
    if end < 0:
      return None, f"unbalanced braces in the last {cmd}{{...}}"
    content = text[i + 1:end].strip()
  else:
    m = re.match(r"[^\s$]+", text[i:])
    if i == start + len(cmd) or not m:
      return None, f"{cmd} without an argument"
    content = m.group(0)
  if not content:
    return None, f"empty {cmd}{{}}"
  return content, ""


def gsm8k_final_answer(text: str) -> Optional[str]:
  """The number after the last ``####`` (thousands commas removed), or None."""
  if "####" not in text:
    return None
  tail = text.rsplit("####", 1)[1].strip()
  if not tail:
    return None
  return tail.splitlines()[0].strip().replace(",", "")


def reference_answer(answer: str) -> str:
  """Reference to grade against: GSM8K solution -> its ``#### N``; else the answer."""
  final = gsm8k_final_answer(answer)
  return final if final is not None else answer.strip()


def extract_prediction(response: str) -> tuple[Optional[str], str]:
  """The model's answer: last boxed content; falls back to a ``#### N`` line."""
  content, reason = last_boxed(response)
  if content is None and reason.startswith("no "):
    final = gsm8k_final_answer(response)
    if final is not None:
      return final, ""
  return content, reason


# ---------------------------------------------------------------------------- normalising

_SPACES = ("\\!", "\\,", "\\;", "\\:", "\\ ", "~")
_UNIT_TAIL = re.compile(r"\\(?:text|mbox|mathrm)\{\s*[a-zA-Z][a-zA-Z ]*\}(?:\^\{?\d\}?)?$")
_WRAPPER = re.compile(r"^\\(?:text|textbf|mbox|mathrm|mathbf)\{(.*)\}$")


def _unwrap(s: str, left: str, right: str) -> str:
  if s.startswith(left) and s.endswith(right) and _match_brace(s, len(left) - 1) == len(s) - 1:
    return s[len(left):-len(right)]
  return s


def normalize(answer: str) -> str:
  """Canonical string for exact comparison (both sides go through the same steps)."""
  s = answer.strip()
  s = s.strip("$").strip()
  s = re.sub(r"\\[dt]frac", r"\\frac", s)
  s = s.replace("\\left", "").replace("\\right", "").replace("\\displaystyle", "")
  for sp in _SPACES:
    s = s.replace(sp, "")
  s = s.replace("\\$", "").replace("\\%", "").replace("%", "")
  s = re.sub(r"\^\s*\{?\\circ\}?", "", s).replace("°", "").replace("\\circ", "")
  s = s.strip()
  if s != (t := _UNIT_TAIL.sub("", s).strip()) and t:
    s = t                                   # "5.4 \text{ cents}" -> "5.4"
  s = re.sub(r"\s*\\text\{\s*(degrees?|units?|cm|m|inches|dollars|cents)\s*\}\s*$", "", s)
  m = _WRAPPER.match(s)
  if m and _match_brace(s, s.index("{")) == len(s) - 1:
    s = m.group(1).strip()                  # \text{Evelyn} -> Evelyn
  s = re.sub(r"^[a-zA-Z]\s*(=|\\in)\s*", "", s)   # x = 5, x \in [-2,7]
  s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
  s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
  s = re.sub(r"\\sqrt(\d+)", r"\\sqrt{\1}", s)
  s = s.replace(" ", "")
  if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
    s = s.replace(",", "")                  # 32,348 -> 32348
  if re.fullmatch(r"\(?[A-Ea-e]\)?", s):
    s = s.strip("()").upper()               # (C) -> C
  if re.fullmatch(r"-?\d*\.\d+|-?\d+\.", s):
    s = s.rstrip("0").rstrip(".") if "." in s else s
    s = "0" if s in ("", "-", "-0") else s
    s = re.sub(r"^(-?)\.", r"\g<1>0.", s)  # .15 -> 0.15
  s = s.rstrip(".")
  if re.fullmatch(r"[A-Za-z]+", s):
    s = s.lower()
  return s


# --------------------------------------------------------------------- math_verify + limits


class _Timeout(BaseException):
  """Raised by the alarm; BaseException so library ``except Exception`` lets it through."""


def _run_with_limit(fn: Callable[[], bool], seconds: float) -> bool:
  """``fn()`` under a wall-clock limit; raises :class:`_Timeout` when exceeded."""
  if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
    def handler(signum, frame):
      raise _Timeout()
    old_handler = signal.signal(signal.SIGALRM, handler)
    old_delay, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    t0 = time.monotonic()
    try:
      return fn()
    finally:
      signal.setitimer(signal.ITIMER_REAL, 0)
      signal.signal(signal.SIGALRM, old_handler)
      if old_delay > 0:     # re-arm an outer timer with what is left of it
        signal.setitimer(signal.ITIMER_REAL, max(1e-3, old_delay - (time.monotonic() - t0)))
  box: dict = {}

  def work():
    try:
      box["value"] = fn()
    except BaseException as e:  # noqa: BLE001  (reported to the caller below)
      box["error"] = e
  worker = threading.Thread(target=work, daemon=True, name="grade-math-verify")
  worker.start()
  worker.join(seconds)
  if worker.is_alive():
    raise _Timeout()
  if "error" in box:
    raise box["error"]
  return box["value"]


def _math_verify_equal(reference: str, prediction: str) -> bool:
  from math_verify import parse, verify
  gold = parse(f"${reference}$", parsing_timeout=None)
  pred = parse(f"${prediction}$", parsing_timeout=None)
  if not gold or not pred:
    return False
  return bool(verify(gold, pred, timeout_seconds=None))


def _quiet_math_verify_logs() -> None:
  # math_verify warns once that its own timeout is off: our limit replaces it.
  for name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(name).setLevel(logging.ERROR)


def grade_answer(prediction: Optional[str], reference: str,
                 timeout_s: float = 5.0) -> GradeResult:
  """Compares an extracted answer with a reference answer (already extracted)."""
  try:
    if prediction is None:
      return GradeResult(False, "no answer extracted", None, reference)
    if normalize(prediction) == normalize(reference):
      return GradeResult(True, "normalised string match", prediction, reference)
    _quiet_math_verify_logs()
    equal = _run_with_limit(lambda: _math_verify_equal(reference, prediction), timeout_s)
    return GradeResult(bool(equal), "math_verify: equal" if equal else
                       "math_verify: not equal", prediction, reference)
  except _Timeout:
    return GradeResult(False, f"math_verify timeout after {timeout_s:g}s", prediction,
                       reference)
  except Exception as e:  # noqa: BLE001  (graded wrong, never crash an eval)
    return GradeResult(False, f"grading error: {type(e).__name__}: {e}"[:300], prediction,
                       reference)


def grade(response: str, answer: str, timeout_s: float = 5.0) -> GradeResult:
  """Grades a model response against a dataset answer (GSM8K solution or MATH answer)."""
  try:
    reference = reference_answer(answer)
    prediction, reason = extract_prediction(response)
  except Exception as e:  # noqa: BLE001
    return GradeResult(False, f"grading error: {type(e).__name__}: {e}"[:300], None,
                       str(answer))
  if prediction is None:
    return GradeResult(False, reason, None, reference)
  return grade_answer(prediction, reference, timeout_s)
