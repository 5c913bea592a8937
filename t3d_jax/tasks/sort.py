"""The synthetic "sort with ties" task: a second task for the recipes, built unlike words.

A question lists items, each two letters and a one-digit key: ``gh3 ab1 ef2 cd2``; the
answer is the same items ordered by key, ties in any order, separated by spaces and ended
by a full stop: ``ab1 cd2 ef2 gh3.`` or ``ab1 ef2 cd2 gh3.``. The prompt is the question
plus ``=``, so with block size 4 every prompt block holds one item and every answer block
one item and its separator.

Unlike words, nothing is a word list: the answer is a function of the question (a
permutation), the letters of a block must be *copied* together from one item of the
prompt (``ab`` + ``cd`` -> ``ad2`` is no item), and the ties make several answers valid,
so a block decoded in one forward mixes the letters of the tied items (its marginals),
and two blocks may pick the same item. Keys are 1..3, so most questions have ties.

:func:`verify` is the exact checker; :func:`split_rows` samples question/answer rows
(test questions never occur in training) and :func:`build_tokenizer` writes the
character-level tokenizer (SDAR special tokens first).
"""
from __future__ import annotations

import re

import numpy as np

LETTERS = "abcdefghijklmnop"            # item names: two of these (256 names)
KEYS = "123"                             # item keys: few, so ties are common
ALPHABET = "abcdefghijklmnopqrstuvwxyz" + "0123456789" + " .=\n"
VOCAB_SIZE = 27 + len(ALPHABET) + 1      # SDAR specials, characters, <unk>
PROMPT_TEMPLATE = "{question}="
_ITEM = re.compile(r"[a-z]{2}[0-9]")


def items_of(question: str) -> list[str] | None:
  """The question's items, or None when it is not a sort question."""
  items = str(question).split()
  if not items or not all(_ITEM.fullmatch(x) for x in items):
    return None
  return items


def question_problem(question, answer) -> str | None:
  del answer
  return None if items_of(question) else f"not a sort-task question {question!r}"


def verify(question: str, response: str) -> tuple[bool, str]:
  """(correct, reason): the response lists exactly the question's items (a permutation),
  keys non-decreasing, single spaces between them, a final '.', nothing else (surrounding
  whitespace is ignored)."""
  items = items_of(question)
  if items is None:
    return False, f"bad question {question!r}"
  text = response.strip()
  if not re.fullmatch(r"[a-z]{2}[0-9](?: [a-z]{2}[0-9])*\.", text):
    return False, "format: expected items like ab1 separated by spaces and a final '.'"
  got = text[:-1].split(" ")
  if sorted(got) != sorted(items):
    return False, f"not a permutation of the question's items: {' '.join(got)}"
  keys = [x[2] for x in got]
  if keys != sorted(keys):
    return False, f"keys out of order: {' '.join(got)}"
  return True, "ok"


def make_question(rng: np.random.Generator, n: int) -> str:
  letters = list(LETTERS)
  names: list[str] = []
  while len(names) < n:
    name = "".join(rng.choice(letters, size=2))
    if name not in names:
      names.append(name)
  return " ".join(name + str(rng.choice(list(KEYS))) for name in names)


def answer_for(question: str, rng: np.random.Generator) -> str:
  """One valid answer drawn uniformly: the items in key order, ties in a random order (as
  words draws one word of each category: the data shows every valid answer, so the
  model learns several, which is what decoding a block in one forward mixes up)."""
  items = question.split()
  order = rng.permutation(len(items))
  return " ".join(sorted((items[i] for i in order), key=lambda x: x[2])) + "."


def make_rows(num: int, *, seed: int, min_items: int, max_items: int,
              exclude: frozenset = frozenset()) -> list[dict]:
  if not 1 <= min_items <= max_items <= len(LETTERS) ** 2:
    raise ValueError(f"need 1 <= min_words <= max_words (items per question), got "
                     f"{min_items}, {max_items}")
  rng = np.random.default_rng(seed)
  rows = []
  while len(rows) < num:
    q = make_question(rng, int(rng.integers(min_items, max_items + 1)))
    if q not in exclude:
      rows.append(dict(question=q, answer=answer_for(q, rng)))
  return rows


def split_rows(num_train: int, num_test: int, *, seed: int, min_words: int = 4,
               max_words: int = 4) -> tuple[list[dict], list[dict]]:
  """Test rows have distinct questions never seen in training; ``min_words`` ..
  ``max_words`` items per question (the config's ``task.min_words`` / ``max_words``:
  answer blocks, as for words)."""
  min_items, max_items = min_words, max_words
  test = make_rows(num_test, seed=seed + 1, min_items=min_items, max_items=max_items)
  seen = {r["question"] for r in test}
  if len(seen) < len(test):
    test = list({r["question"]: r for r in test}.values())
  train = make_rows(num_train, seed=seed, min_items=min_items, max_items=max_items,
                    exclude=frozenset(seen))
  return train, test


def build_tokenizer(out_dir, model_max_length: int = 256):
  """A character-level tokenizer over :data:`ALPHABET` with the SDAR special tokens at
  ids 0..26 (``<|MASK|>`` = 26, pad ``<|endoftext|>``, eos ``<|im_end|>``)."""
  from t3d_jax.data.tokenizer_build import build_char_tokenizer
  return build_char_tokenizer(out_dir, ALPHABET, model_max_length=model_max_length)
