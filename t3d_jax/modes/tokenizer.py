"""tokenizer mode: a tokenizer for your own data -> <workdir>/tokenizer.

    python -m t3d_jax.main --config configs/pretrain.py --config.mode=tokenizer \\
        --config.workdir=/tmp/mytask --config.pretrain.data=train.jsonl \\
        --config.tokenizer.kind=char        # or bpe (--config.tokenizer.vocab_size=512)

``tokenizer.kind=char``: one token per character of the question and answer fields of
``tokenizer.data`` (default: ``pretrain.data``; the fields are ``pretrain.question_field``
/ ``answer_field``) plus the literal characters of the prompt (``prompt_template``, or the
chat template with the math instruction). ``bpe``: a byte-level BPE of
``tokenizer.vocab_size`` ids trained on the same text (any text encodes). Both have the
SDAR special tokens at ids 0..26 (``<|MASK|>`` = 26, pad ``<|endoftext|>``, eos
``<|im_end|>``) and the SDAR chat template, and are saved with ``save_pretrained``; the
pretrain mode uses ``<workdir>/tokenizer`` by default. Text that a char tokenizer cannot
encode later (a character not in its data) is an error naming the file and row.
An existing tokenizer is kept unless ``--config.overwrite=True``.
"""
from __future__ import annotations

import tempfile

from t3d_jax.data import datasets
from t3d_jax.data import tokenizer as tok_lib
from t3d_jax.data.tokenizer_build import SDAR_SPECIAL_TOKENS, build_char_tokenizer, train_tiny_bpe
from t3d_jax.distributed import barrier, is_main_process
from t3d_jax.errors import InputError
from t3d_jax.fileio import atomic_dir
from t3d_jax.modes.stage import Result, Stage, workdir_data
from t3d_jax.workdir import Workdir

KINDS = ("char", "bpe")


def _texts(config) -> list[str]:
  p, t = config.pretrain, config.tokenizer
  sources = list(t.data) or ([p.data] if p.data else [])
  if not sources:
    raise InputError("tokenizer mode needs --config.pretrain.data or --config.tokenizer.data "
                     "(question/answer JSONL files whose text the tokenizer must cover)")
  texts = []
  for src in sources:
    for r in datasets.load_qa(src, p.question_field, p.answer_field):
      texts += [r["question"], r["answer"]]
  return texts


def prompt_characters(config, texts: list[str]) -> str:
  """The characters the prompts add around the questions (template literals)."""
  with tempfile.TemporaryDirectory() as tmp:  # any tokenizer carries the chat template
    probe = tok_lib.load_tokenizer(build_char_tokenizer(tmp, "x"))
    rendered = tok_lib.math_prompt(probe, "", config.prompt_template or None)
  for token, _ in SDAR_SPECIAL_TOKENS:
    rendered = rendered.replace(token, "")
  return rendered


def run(config) -> Result:
  t = config.tokenizer
  if t.kind not in KINDS:
    raise InputError(f"config tokenizer.kind={t.kind!r} is not one of {', '.join(KINDS)}")
  out = Workdir(config).tokenizer
  if is_main_process():  # one writer; the others wait
    if (out / "tokenizer_config.json").is_file() and not config.overwrite:
      print(f"[tokenizer] {out} exists, kept (--config.overwrite=True rebuilds it)",
            flush=True)
    else:
      texts = _texts(config)
      with atomic_dir(out) as tmp:
        if t.kind == "char":
          alphabet = "".join(sorted(set("".join(texts)) | set(prompt_characters(config, texts))))
          build_char_tokenizer(tmp, alphabet, model_max_length=t.model_max_length)
        else:
          try:
            train_tiny_bpe(tmp, texts, vocab_size=t.vocab_size,
                           model_max_length=t.model_max_length)
          except ValueError as e:
            raise InputError(f"config tokenizer.vocab_size: {e}") from None
      n = len(tok_lib.load_tokenizer(out))
      print(f"[tokenizer] {t.kind}: {n} tokens from {len(texts)} texts in {out}", flush=True)
  barrier("tokenizer: written")
  return Result("tokenizer", (out,))


STAGE = Stage("tokenizer", run, "builds a char or BPE tokenizer over the pretraining data",
              keys=("tokenizer", "tokenizer_dir", "prompt_template", "pretrain.data",
                    "pretrain.question_field", "pretrain.answer_field"),
              inputs=lambda config, layout: workdir_data(layout, config.pretrain.data,
                                                         *config.tokenizer.data),
              outputs=lambda config, layout: [layout.tokenizer])
