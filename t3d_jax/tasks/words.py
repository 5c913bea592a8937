"""The synthetic "category words" task of the CPU demo: few-step decoding's hard case.

A question is a list of category tags, e.g. ``ANM FOD TOL``; the answer is one
three-letter word of each category in that order, each followed by a space and the last
by a full stop: ``cat pie saw.``. The prompt is the question plus ``=``, so with block
size 4 every prompt block holds one tag and every answer block one word and its
separator (block k of the answer belongs to block k of the prompt), and

* the three letters of a block are jointly constrained (they must spell a word of the
  block's category: ``c?t`` is ``cat``, but ``c`` + ``o`` + ``t`` from different words is
  not a word), and
* several completions are valid (any word of the category; the answer field holds one
  sampled reference), like the many valid phrasings of real text.

Decoding a block in one forward samples the letters independently from their marginals
(a mix of several words); decoding it token by token conditions each letter on the
previous ones. The gap between the two is what T3D distillation should close.

:func:`verify` is the exact checker; :func:`make_rows` samples question/answer rows and
:func:`build_tokenizer` writes the character-level tokenizer (SDAR special tokens first).
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np

# tag -> (category, words): three letters each, no word in two categories
CATEGORIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "ANM": ("animal", ("ant", "ape", "bat", "bee", "cat", "cow", "dog", "eel", "elk", "emu",
                     "fox", "hen", "owl", "pig", "rat", "yak")),
    "BDY": ("body part", ("arm", "ear", "eye", "gum", "hip", "jaw", "leg", "lip", "rib", "toe")),
    "FOD": ("food", ("bun", "egg", "fig", "ham", "jam", "nut", "oat", "pea", "pie", "rye",
                   "tea", "yam")),
    "TOL": ("tool", ("awl", "axe", "hoe", "jig", "mop", "net", "pen", "pin", "rod", "saw")),
    "VRB": ("verb", ("ask", "cry", "dig", "eat", "fly", "hop", "run", "sit", "sew", "win")),
}
ALPHABET = "abcdefghijklmnopqrstuvwxyz" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ" + " .=\n"
VOCAB_SIZE = 27 + len(ALPHABET) + 1  # SDAR specials, characters, <unk>
PROMPT_TEMPLATE = "{question}="   # the prompt string the model sees: ``ANM FOD TOL=``


@dataclasses.dataclass(frozen=True)
class Verdict:
  correct: bool
  prediction: str
  reason: str


def words_of(tag: str) -> tuple[str, ...]:
  return CATEGORIES[tag][1]


def verify(question: str, response: str) -> Verdict:
  """Exact check of a response against a question (special tokens already removed):
  one word per tag, word i in the category of tag i, separated by single spaces, ended
  by a full stop, nothing else (surrounding whitespace is ignored)."""
  text = response.strip()
  codes = question.split()
  if not codes or any(c not in CATEGORIES for c in codes):
    return Verdict(False, text, f"bad question {question!r}")
  m = re.fullmatch(r"([a-z]{3}(?: [a-z]{3})*)\.", text)
  if not m:
    return Verdict(False, text, "format: expected three-letter words separated by spaces "
                                "and a final '.'")
  words = m.group(1).split(" ")
  if len(words) != len(codes):
    return Verdict(False, text, f"{len(words)} words for {len(codes)} tags")
  for i, (w, c) in enumerate(zip(words, codes)):
    if w not in words_of(c):
      return Verdict(False, text, f"word {i + 1} {w!r} is not a {CATEGORIES[c][0]}")
  return Verdict(True, text, "ok")


def answer_for(question: str, rng: np.random.Generator) -> str:
  return " ".join(str(rng.choice(words_of(c))) for c in question.split()) + "."


def make_rows(num: int, *, seed: int, min_words: int = 2, max_words: int = 4,
              exclude: frozenset = frozenset()) -> list[dict]:
  """``num`` question/answer rows with 2..4 (min_words..max_words) categories each,
  questions drawn uniformly, those in ``exclude`` skipped (held-out test questions)."""
  if not 1 <= min_words <= max_words:
    raise ValueError(f"need 1 <= min_words <= max_words, got {min_words}, {max_words}")
  codes = sorted(CATEGORIES)
  space = sum(len(codes) ** n for n in range(min_words, max_words + 1)) - len(exclude)
  if space <= 0:
    raise ValueError("every question is excluded")
  rng = np.random.default_rng(seed)
  rows = []
  while len(rows) < num:
    n = int(rng.integers(min_words, max_words + 1))
    q = " ".join(rng.choice(codes, size=n))
    if q in exclude:
      continue
    rows.append(dict(question=q, answer=answer_for(q, rng)))
  return rows


def split_rows(num_train: int, num_test: int, *, seed: int, min_words: int = 2,
               max_words: int = 4) -> tuple[list[dict], list[dict]]:
  """Test rows have distinct questions never seen in training."""
  test: list[dict] = []
  seen: set = set()
  for r in make_rows(num_test * 50, seed=seed + 1, min_words=min_words, max_words=max_words):
    if r["question"] not in seen:
      seen.add(r["question"])
      test.append(r)
      if len(test) == num_test:
        break
  train = make_rows(num_train, seed=seed, min_words=min_words, max_words=max_words,
                    exclude=frozenset(seen))
  return train, test


def build_tokenizer(out_dir, model_max_length: int = 256):
  """A character-level tokenizer over :data:`ALPHABET` with the SDAR special tokens at
  ids 0..26 (``<|MASK|>`` = 26, pad ``<|endoftext|>``, eos ``<|im_end|>``)."""
  from t3d_jax.data.tokenizer_build import build_char_tokenizer
  return build_char_tokenizer(out_dir, ALPHABET, model_max_length=model_max_length)
