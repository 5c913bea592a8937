"""The second synthetic task (sort with ties): exact verifier, rows, tokenizer alignment,
and the configs that run the recipes on it (configs/demo.py:sort, compare.py:sort)."""
import pytest

from t3d_jax.config_base import config_module
from t3d_jax.data.tokenizer import encode, load_tokenizer, special_ids
from t3d_jax.distill.methods import METHODS
from t3d_jax.tasks import grade_response, sort


@pytest.mark.parametrize("question,response,ok,why", [
    ("gh3 ab1 ef2 cd2", "ab1 cd2 ef2 gh3.", True, "ok"),
    ("gh3 ab1 ef2 cd2", " ab1 ef2 cd2 gh3.\n", True, "ok"),          # ties in any order
    ("gh3 ab1 ef2 cd2", "ab1 ad2 ef2 gh3.", False, "not a permutation"),  # letters mixed
    ("gh3 ab1 ef2 cd2", "ab1 cd2 cd2 gh3.", False, "not a permutation"),  # one item twice
    ("gh3 ab1 ef2 cd2", "ab1 cd2 gh3 ef2.", False, "keys out of order"),
    ("gh3 ab1 ef2 cd2", "ab1 cd2 ef2 gh3", False, "format"),
    ("gh3 ab1 ef2 cd2", "ab1 cd2 ef2.", False, "not a permutation"),
    ("gh3 ab1", "ab1  gh3.", False, "format"),
    ("ANM FOD", "ab1.", False, "bad question"),
])
def test_verify(question, response, ok, why):
  good, reason = sort.verify(question, response)
  assert good is ok and reason.startswith(why)
  assert grade_response("sort", question, "", response).correct is ok


def test_rows_have_ties_several_answers_and_held_out_test_questions():
  train, test = sort.split_rows(2000, 64, seed=5, min_words=4, max_words=4)
  assert len(train) == 2000 and len(test) == 64
  assert not {r["question"] for r in test} & {r["question"] for r in train}
  for r in train + test:
    assert sort.verify(r["question"], r["answer"])[0]
    assert len(r["question"].split()) == 4 and len(set(r["question"].split())) == 4
  tied = [r for r in train if len({x[2] for x in r["question"].split()}) < 4]
  assert len(tied) == len(train)   # 4 items, 3 keys: always a tie
  q = tied[0]["question"]
  items = sorted(q.split(), key=lambda x: x[2])
  keys = [x[2] for x in items]
  k = next(i for i in range(3) if keys[i] == keys[i + 1])
  items[k], items[k + 1] = items[k + 1], items[k]
  assert sort.verify(q, " ".join(items) + ".")[0]   # another valid answer
  assert sort.split_rows(50, 5, seed=1)[0] == sort.split_rows(50, 5, seed=1)[0]
  with pytest.raises(ValueError, match="min_words <= max_words"):
    sort.make_rows(1, seed=0, min_items=3, max_items=2)


def test_one_item_per_block(tmp_path):
  sort.build_tokenizer(tmp_path)
  tok = load_tokenizer(tmp_path)
  assert special_ids(tok).vocab_size == sort.VOCAB_SIZE
  p, a = encode(tok, [sort.PROMPT_TEMPLATE.format(question="gh3 ab1 ef2 cd2"),
                      "ab1 cd2 ef2 gh3."])
  assert len(p) == 16 and len(a) == 16


def test_the_recipes_run_on_either_task():
  demo = config_module("configs/demo.py")
  c = demo.get_config("sort")
  assert c.task.name == "sort" and c.arch.vocab_size == sort.VOCAB_SIZE
  assert c.workdir == "workdir/demo_sort" and c.pretrain.target_accuracy > 0
  assert demo.get_config().task.name == "words" and demo.get_config().pretrain.eval_every == 0
  with pytest.raises(ValueError, match="the demo runs a synthetic task"):
    demo.get_config("math")
  cmp = config_module("configs/compare.py").get_config("sort")
  names = set(cmp.pipeline.variants)
  assert len(names) == len(METHODS) * 3 * 3 and cmp.workdir == "workdir/compare_sort"
  v = cmp.pipeline.variants
  assert v["sft_verified_s2"]["distill"]["filter_correct"] is True
  assert v["dparallel_refresh_s0"]["distill"]["refresh_every"] == 4
  assert v["t3d_offline_s1"]["distill"]["refresh_every"] == 0
