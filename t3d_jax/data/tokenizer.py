"""Tokenizer helpers: load any HF tokenizer dir, build the math prompt, resolve token ids.

One prompt for rollout, distillation and evaluation alike (docs/method.md §6): the
tokenizer's own chat template applied to a single user message

    "{question}\\nPlease reason step by step, and put your final answer within \\boxed{}."

with the generation prompt added (for the Qwen template that is the original release's
literal string plus the trailing newline after ``assistant``). A ``prompt_template``
string containing ``{question}`` overrides the chat template (it is used verbatim, only
``{question}`` is substituted, so braces such as ``\\boxed{}`` need no escaping).

Token ids: the diffusion mask token is required (``<|MASK|>`` by default; no silent
fall-back to pad as in the original), pad and eos too; the stop ids are eos plus
``<|im_end|>`` and ``<|endoftext|>`` where the vocabulary has them. Each missing token is
reported by name together with the tokenizer dir.

The offline builders live in :mod:`t3d_jax.data.tokenizer_build` and are re-exported.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Optional, Sequence, Union

from t3d_jax.data.tokenizer_build import (  # noqa: F401  (re-exported API)
    CHAT_TEMPLATE, MASK_TOKEN, build_sdar_tokenizer, train_tiny_bpe)
from t3d_jax.errors import InputError

PathLike = Union[str, os.PathLike]

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
STOP_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>")  # <|eot_id|>: LLaDA-Instruct


class TokenizerError(InputError):
  """A tokenizer dir that lacks something T3D needs; the message names it and the dir."""


def load_tokenizer(path: PathLike):
  """``AutoTokenizer.from_pretrained(path)`` from a local dir only (never the hub), never
  running code the dir ships (``trust_remote_code=False``): a tokenizer that names its own
  class in ``auto_map`` (Dream's ``DreamTokenizer``, a copy of Qwen2's byte-level BPE) is
  read from its files by transformers' own class instead (:func:`_without_its_code`)."""
  from transformers import AutoTokenizer
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise TokenizerError(f"{path}: tokenizer dir not found")
  try:
    return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
  except Exception as e:  # transformers raises many types; keep the dir in the message
    if _ships_code(path):
      return _without_its_code(path)
    raise TokenizerError(f"{path}: cannot load tokenizer ({_one_line(e)})") from e


def _one_line(e: Exception) -> str:
  """An exception of a library (transformers, tokenizers, jinja) as one line."""
  return f"{type(e).__name__}: {' '.join(str(e).split())}"


def _ships_code(path: str) -> bool:
  try:
    with open(os.path.join(path, "tokenizer_config.json"), "rb") as f:
      auto_map = json.load(f).get("auto_map")
  except (OSError, ValueError, RecursionError, AttributeError):  # AttributeError: no object
    return False
  return isinstance(auto_map, dict) and "AutoTokenizer" in auto_map


def _without_its_code(path: str):
  """The tokenizer of a dir whose own class is remote code: its tokenizer.json through
  transformers' fast tokenizer, else its vocab.json + merges.txt through Qwen2Tokenizer
  (Dream's tokenizer is Qwen2's: same files, pre-tokenizer and special tokens)."""
  import transformers
  if os.path.isfile(os.path.join(path, "tokenizer.json")):
    cls = transformers.PreTrainedTokenizerFast
  elif all(os.path.isfile(os.path.join(path, f)) for f in ("vocab.json", "merges.txt")):
    cls = transformers.Qwen2Tokenizer
  else:
    raise TokenizerError(f"{path}: the tokenizer ships its own code (auto_map), which t3d_jax "
                         "does not run, and has neither tokenizer.json nor vocab.json + "
                         "merges.txt to read instead")
  try:
    return cls.from_pretrained(path, local_files_only=True)
  except Exception as e:
    raise TokenizerError(f"{path}: cannot load tokenizer with {cls.__name__} "
                         f"({_one_line(e)})") from e


def _dir(tokenizer) -> str:
  return getattr(tokenizer, "name_or_path", "") or "<in-memory tokenizer>"


def math_user_message(question: str) -> str:
  """The user turn of the math prompt: question, newline, the boxed instruction."""
  return f"{question}\n{MATH_INSTRUCTION}"


def math_prompt(tokenizer, question: str, prompt_template: Optional[str] = None,
                user_message: Callable[[str], str] = math_user_message) -> str:
  """The exact prompt string decoded from (and stored in trajectory rows): the chat
  template on ``user_message(question)`` (the task's instruction), or
  ``prompt_template`` with the question in place."""
  if prompt_template:
    if "{question}" not in prompt_template:
      raise TokenizerError(f"prompt_template has no {{question}} placeholder: "
                           f"{prompt_template!r}")
    return prompt_template.replace("{question}", question)
  if not getattr(tokenizer, "chat_template", None):
    raise TokenizerError(f"{_dir(tokenizer)}: tokenizer has no chat_template; set "
                         f"prompt_template (a string with {{question}}) instead")
  messages = [{"role": "user", "content": user_message(question)}]
  try:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
  except Exception as e:  # the template is the dir's own code: anything can go wrong in it
    raise TokenizerError(f"{_dir(tokenizer)}: its chat_template fails ({_one_line(e)}); fix "
                         "it or set prompt_template (a string with {question})") from None


def encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
  """Token ids of each text, no BOS/EOS added (prompts already carry their specials)."""
  try:
    out = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
  except Exception as e:  # a tokenizer dir that loads but cannot encode (its files' fault)
    raise TokenizerError(f"{_dir(tokenizer)}: the tokenizer cannot encode text "
                         f"({_one_line(e)})") from None
  return [list(map(int, ids)) for ids in out]


def check_encodable(tokenizer, texts: Sequence[str], ids: Sequence[Sequence[int]],
                    where: Sequence[str]) -> None:
  """A text that encoded to the unknown token (a character a task-built tokenizer does not
  have) is an InputError naming ``where[i]`` (file and row) and the character."""
  unk = _token_id(tokenizer, getattr(tokenizer, "unk_token", None) or "<unk>")
  if unk is None:
    return  # byte-level BPE: every text encodes
  for text, row_ids, w in zip(texts, ids, where):
    if unk in row_ids:
      bad = next((c for c in text if unk in encode(tokenizer, [c])[0]), "?")
      raise InputError(f"{w}: character {bad!r} is not in the tokenizer ({_dir(tokenizer)}; "
                       "it would become <unk>); rebuild it over this data with "
                       "--config.mode=tokenizer, or use a BPE tokenizer")


def build_prompts(tokenizer, rows: Sequence[dict], prompt_template: str, data_name: str,
                  dcfg=None, user_message: Callable[[str], str] = math_user_message
                  ) -> tuple[list[str], list[list[int]]]:
  """Prompt strings (chat template on the task's ``user_message``, or
  ``prompt_template``), each followed by its row's ``prefix`` (code rows: the text the
  response continues), and their ids; with a DecodeConfig ``dcfg``, a prompt that does
  not fit ``dcfg.max_length`` with ``max_new_tokens`` is an InputError naming the row."""
  texts = [math_prompt(tokenizer, r["question"], prompt_template or None, user_message)
           + r.get("prefix", "") for r in rows]
  prompt_ids = encode(tokenizer, texts)
  check_encodable(tokenizer, texts, prompt_ids,
                  [f"{data_name}, row {r['index'] + 1}" for r in rows])
  if dcfg is not None and dcfg.max_length is not None:
    budget = dcfg.max_length - dcfg.max_new_tokens
    for r, p in zip(rows, prompt_ids):
      if len(p) > budget:
        raise InputError(
            f"{data_name}, row {r['index'] + 1}: prompt too long: {len(p)} tokens > budget "
            f"{budget} (decode.max_length={dcfg.max_length} - decode.max_new_tokens="
            f"{dcfg.max_new_tokens}); raise decode.max_length or drop the row")
  for r, p in zip(rows, prompt_ids):
    if not p:
      raise InputError(f"{data_name}, row {r['index'] + 1}: prompt has no tokens")
  return texts, prompt_ids


@dataclasses.dataclass(frozen=True)
class SpecialIds:
  """Ids the sampler and the trainer need."""
  mask_id: int
  pad_id: int
  eos_id: int
  stop_ids: tuple[int, ...]     # eos first, then <|im_end|>/<|endoftext|> when present
  vocab_size: int               # len(tokenizer): ids are < vocab_size


def _token_id(tokenizer, token: str) -> Optional[int]:
  vocab = tokenizer.get_vocab()
  return vocab.get(token)


def special_ids(tokenizer, mask_token: str = MASK_TOKEN,
                pad_token: Optional[str] = None, model_mask_id: Optional[int] = None
                ) -> SpecialIds:
  """Resolves mask / pad / eos / stop ids; raises :class:`TokenizerError` naming the
  missing token and the dir.

  The mask id is the model's own when its config.json names one (``model_mask_id``:
  LLaDA's and Dream's ``mask_token_id``, the model config's field), else the tokenizer's
  ``mask_token`` when set, else ``mask_token`` looked up in the vocabulary. ``pad_token``
  overrides the tokenizer's pad token."""
  where = _dir(tokenizer)
  if model_mask_id is not None:
    mask_id = int(model_mask_id)
    if not 0 <= mask_id < len(tokenizer):
      raise TokenizerError(f"{where}: the model's mask_token_id {mask_id} is outside the "
                           f"tokenizer's vocabulary [0, {len(tokenizer)})")
  else:
    mask_id = tokenizer.mask_token_id if getattr(tokenizer, "mask_token", None) else None
  if mask_id is None:
    mask_id = _token_id(tokenizer, mask_token)
  if mask_id is None:
    raise TokenizerError(f"{where}: mask token {mask_token!r} not in the vocabulary, no "
                         f"mask_token set and no mask_token_id in the model's config.json; "
                         f"a diffusion LM needs one")
  if pad_token is not None:
    pad_id = _token_id(tokenizer, pad_token)
    if pad_id is None:
      raise TokenizerError(f"{where}: pad token {pad_token!r} not in the vocabulary")
  else:
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
      raise TokenizerError(f"{where}: no pad token (pad_token unset); set one in "
                           f"tokenizer_config.json or pass pad_token")
  eos_id = tokenizer.eos_token_id
  if eos_id is None:
    raise TokenizerError(f"{where}: no eos token (eos_token unset in tokenizer_config.json)")
  if int(mask_id) in (int(pad_id), int(eos_id)):
    raise TokenizerError(f"{where}: mask id {mask_id} equals the pad or eos id; the mask "
                         f"token must be a token of its own")
  stops = [int(eos_id)]
  for tok in STOP_TOKENS:
    tid = _token_id(tokenizer, tok)
    if tid is not None and tid not in stops:
      stops.append(int(tid))
  return SpecialIds(mask_id=int(mask_id), pad_id=int(pad_id), eos_id=int(eos_id),
                    stop_ids=tuple(stops), vocab_size=len(tokenizer))
