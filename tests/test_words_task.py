"""The demo's synthetic task: exact verifier, row sampling, character tokenizer."""
import numpy as np
import pytest

from t3d_jax.data.tokenizer import encode, load_tokenizer, special_ids
from t3d_jax.tasks import extract, grade_response, words


@pytest.mark.parametrize("question,response,ok,why", [
    ("ANM FOD", "cat pie.", True, "ok"),
    ("ANM FOD", "  cat pie.\n", True, "ok"),
    ("ANM FOD", "cot pie.", False, "word 1 'cot' is not a animal"),
    ("ANM FOD", "pie cat.", False, "word 1 'pie' is not a animal"),
    ("ANM FOD", "cat pie", False, "format"),
    ("ANM FOD", "cat  pie.", False, "format"),
    ("ANM FOD", "cat pie saw.", False, "3 words for 2 tags"),
    ("ANM", "cats.", False, "format"),
    ("XYZ", "cat.", False, "bad question"),
    ("", "cat.", False, "bad question"),
])
def test_verify(question, response, ok, why):
  v = words.verify(question, response)
  assert v.correct is ok and v.reason.startswith(why)


def test_categories_are_disjoint_three_letter_words():
  seen = set()
  for tag, (_, ws) in words.CATEGORIES.items():
    assert len(tag) == 3 and tag.isupper() and len(ws) >= 8
    assert all(len(w) == 3 and w.isalpha() and w.islower() for w in ws)
    assert not seen & set(ws)
    seen |= set(ws)


def test_rows_are_valid_varied_and_test_questions_are_held_out():
  train, test = words.split_rows(2000, 50, seed=3, min_words=2, max_words=4)
  assert len(train) == 2000 and len(test) == 50
  assert len({r["question"] for r in test}) == 50
  assert not {r["question"] for r in test} & {r["question"] for r in train}
  for r in train + test:
    assert words.verify(r["question"], r["answer"]).correct
  assert {len(r["question"].split()) for r in train} == {2, 3, 4}
  # several valid answers per question occur (the task's point)
  by_q = {}
  for r in train:
    by_q.setdefault(r["question"], set()).add(r["answer"])
  assert max(len(v) for v in by_q.values()) > 1
  assert words.split_rows(2000, 50, seed=3)[0] == words.split_rows(2000, 50, seed=3)[0]
  with pytest.raises(ValueError, match="min_words"):
    words.make_rows(1, seed=0, min_words=3, max_words=2)


def test_one_token_per_character_and_blocks_align(tmp_path):
  words.build_tokenizer(tmp_path)
  tok = load_tokenizer(tmp_path)
  ids = special_ids(tok)
  assert ids.vocab_size == words.VOCAB_SIZE and ids.mask_id == 26
  prompt = words.PROMPT_TEMPLATE.format(question="ANM FOD TOL BDY")
  p, a = encode(tok, [prompt, "cat pie saw arm."])
  assert len(p) == 16 and len(a) == 16  # 4 prompt blocks, 4 answer blocks of 4
  assert tok.decode(p + a + [ids.eos_id], skip_special_tokens=True) == prompt + "cat pie saw arm."
  assert tok.decode(a[4:8]) == "pie "


def test_grade_and_extract_dispatch_on_task():
  g = grade_response("words", "ANM", "cat.", "dog.")
  assert g.correct and g.prediction == "dog." and g.reference == "cat."
  assert not grade_response("words", "ANM", "cat.", "pie.").correct
  assert grade_response("math", "q", "#### 4", "so \\boxed{4}").correct
  assert extract("math", "so \\boxed{4}") == "4" and extract("words", " dog.\n") == "dog."
  from t3d_jax.errors import InputError
  with pytest.raises(InputError, match="task.name='chess'"):
    grade_response("chess", "q", "a", "r")


def test_parallel_sampling_of_marginals_breaks_words():
  """Why the task needs few-step care: letters drawn independently from each category's
  per-position marginals rarely spell a word of it."""
  rng = np.random.default_rng(0)
  for tag, (_, ws) in words.CATEGORIES.items():
    cols = list(zip(*ws))
    draws = ["".join(rng.choice(c) for c in cols) for _ in range(2000)]
    assert np.mean([d in ws for d in draws]) < 0.35, tag
