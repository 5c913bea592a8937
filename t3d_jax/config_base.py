"""Shared defaults for every configs/*.py file (one ConfigDict, every key the code reads).

Config files call ``base_config()`` and override what differs; the CLI overrides
further with ``--config.key=value``.
"""
from __future__ import annotations

import ml_collections

from t3d_jax.errors import InputError


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = ""               # convert | export (more modes register in t3d_jax/main.py)
  c.workdir = ""            # every mode writes under here
  c.seed = 0
  c.overwrite = False       # allow replacing a non-empty output dir
  c.jax_distributed = False  # call jax.distributed.initialize() (multi-host TPU/GPU)
  c.force = False           # run in a workdir set up by another pipeline config
  # Path-valued keys may contain "{workdir}" (replaced by config.workdir).

  # what the answers are graded with (t3d_jax/tasks): math | words (the demo task)
  c.task = ml_collections.ConfigDict(dict(
      name="math",
      num_train=4096, num_test=128,   # task mode (words): rows written under <workdir>/task
      min_words=2, max_words=4))      # categories (= blocks) per question
  # pipeline mode: these modes in order, each skipped/resumed where its output exists
  c.pipeline = ml_collections.ConfigDict(dict(stages=()))

  # convert: HF dir -> orbax model dir
  c.hf_dir = ""
  c.model_dir = ""          # default: <workdir>/model
  c.param_dtype = ""        # "" keeps the checkpoint's dtype; float32 | bfloat16 casts

  # export: orbax model dir -> HF dir
  c.export_dir = ""         # default: <workdir>/hf_export
  c.export_dtype = ""       # "" keeps the param dtype
  c.max_shard_size = "2GB"

  # tokenizer: '' = the model dir's hf_meta/ (convert copies the HF tokenizer there)
  c.tokenizer_dir = ""

  # model numerics used by training modes (the architecture comes from the model dir)
  c.model = ml_collections.ConfigDict(dict(
      dtype="float32",        # compute dtype: float32 | bfloat16
      param_dtype="float32",  # master params (fp32 master + bf16 compute is the TPU default)
      remat="dots"))          # backward recomputes: none | dots (non-matmul ops) | full

  # pretrain: question/answer pairs -> model dir (masked-diffusion objective; SFT with init)
  c.pretrain = ml_collections.ConfigDict(dict(
      data="", question_field="question", answer_field="answer", limit=0,
      use_tfds=False, tfds_dir="",
      init="",                 # '' = random weights of `arch`; else a model dir / HF dir
      arch=ml_collections.ConfigDict(dict(   # vocab_size 0: the tokenizer's size
          vocab_size=0, hidden_size=128, intermediate_size=384, num_layers=2, num_heads=4, num_kv_heads=2,
          head_dim=32, rope_theta=10000.0, tie_word_embeddings=False)),
      max_gen_length=512, length_bucket=8, global_batch=32, micro_batch=32,
      num_epochs=1, max_steps=0, log_every=10, checkpoint_every=200, keep_checkpoints=2,
      async_checkpoint=True,
      optim=ml_collections.ConfigDict(dict(
          lr=1e-3, warmup_steps=50, min_lr_scale=0.1, b1=0.9, b2=0.98, eps=1e-8,
          weight_decay=0.01, decay_norms_and_biases=False, clip_grad_norm=1.0))))

  # --- decoding, shared by rollout and eval (t3d_jax/evaluation/decode.py) ---
  c.prompt_template = ""    # '' = tokenizer chat template on question + math instruction;
                            # else a string with {question} used verbatim
  c.decode = ml_collections.ConfigDict(dict(   # released teacher setting (t3d-method.md §1)
      block_size=4, denoising_steps=4,         # eval: steps = block_size / tokens_per_forward
      strategy="low_confidence_static",        # | sequential | low_confidence_dynamic | entropy_bounded
      threshold=0.9, entropy_bound=0.35,
      temperature=0.1, top_k=0, top_p=1.0,     # 0.1 for rollout and eval (t3d-method.md §6)
      max_new_tokens=256,                      # CPU-sized; the released rollout used 2000
      max_length=0,                            # > 0: prompt + new tokens budget (fixed cache)
      extra_stop_ids=(),                       # added to EOS/<|im_end|>/<|endoftext|>
      prompt_mode="engine", commit_mode="fused", reveal_all_on_last_step=True,
      batch_size=8,                            # sequences per decoding call
      data_parallel=False,                     # shard each batch over this host's devices
      width_multiple=64))                      # prompt widths rounded up to this (fewer compiles)
  # rollout: question/answer JSONL -> trajectories JSONL (t3d_jax/modes/rollout.py)
  c.rollout = ml_collections.ConfigDict(dict(
      data="gsm8k_train",      # gsm8k_train | gsm8k_test | math500 | a question/answer JSONL
      question_field="question", answer_field="answer",
      limit=0,                 # first N questions (0 = all)
      use_tfds=False, tfds_dir="",  # read through the offline TFDS builder (default <workdir>/tfds)
      num_samples=1,           # samples per question
      output="",               # default <workdir>/trajectories.jsonl
      chunk_prompts=256,       # questions per chunk (rows are appended per chunk, resumable)
      plot_trajectories=4))    # step_map heat-map of the first N rows (0 = none)
  # eval: models x decoding settings -> accuracy, length, NFE, TPF, tokens/s, AUP
  c.eval = ml_collections.ConfigDict(dict(
      data="gsm8k_test", question_field="question", answer_field="answer",
      limit=0, use_tfds=False, tfds_dir="",
      models=(),               # ("name=path", ...); () = ("model=<model_dir>",)
      tokens_per_forward=(1, 2, 4),            # with decode.block_size; each must divide it
      strategies=("low_confidence_static",),   # one curve per model x strategy
      grade_timeout_s=5.0,
      output_dir=""))          # default <workdir>/eval
  # --- end decoding ---

  # distill: trajectories -> T3D student (t3d-method.md §2-§3)
  c.distill = ml_collections.ConfigDict(dict(
      data="",                 # trajectories JSONL (rollout output, dLLM-RL layout)
      student_dir="",          # default <workdir>/student: the final student model dir
      original_prompts=False,  # True: chat template on the bare question (released code)
      retokenize=False,        # rows without response_ids: tokenize full_output (released)
      max_prompt_len=1024,     # longer prompts are dropped (counted)
      max_gen_length=2048,     # responses are cut here
      length_bucket=32,        # pad L0/L1 per batch up to a multiple of this
      global_batch=32,         # examples per optimiser update
      micro_batch=1,           # examples per forward; global_batch/micro_batch accumulated
      num_epochs=1,
      max_steps=0,             # > 0: stop after this many updates (and size the schedule)
      multi_round=True,        # self-play: reference <- student every round_interval updates
      round_interval=10,
      fixed_noise=False,       # True: one mask draw per example for all epochs (released)
      log_every=1,
      checkpoint_every=50,
      keep_checkpoints=3,
      async_checkpoint=True))
  c.examples = ml_collections.ConfigDict(dict(
      block_size=8, mask_ratios=(1.0, 0.75, 0.5, 0.25), mask_ratio_exponent=8.0,
      mask_strategy="trace", mask_order="trajectory", random_ratio=0.1, post_num=2,
      original_pads=False, pretrain_eps=1e-3))
  c.loss = ml_collections.ConfigDict(dict(
      alpha=0.5, beta=0.1, lambda_path=0.2, path_k_steps=4, reference_temp=0.0))
  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-5, warmup_steps=20, min_lr_scale=0.1, b1=0.9, b2=0.999, eps=1e-8,
      weight_decay=0.01, decay_norms_and_biases=True, clip_grad_norm=1.0))
  # --- parallel (t3d_jax/parallel.py): mesh, logical-axis rules, multi-host ---
  c.mesh = ml_collections.ConfigDict(dict(
      shape=ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)),  # -1: the rest
      # (logical axis, mesh axis | tuple of mesh axes | None); unlisted names replicate
      rules=(("batch", ("data", "fsdp")), ("vocab", "tensor"), ("embed", "fsdp"),
             ("heads", "tensor"), ("kv_heads", "tensor"), ("head_dim", None),
             ("mlp", "tensor"), ("norm", None), ("layers", None)),
      tpu=""))                # named slice for the memory plan, e.g. v4-8, v5p-16
  c.distributed = ml_collections.ConfigDict(dict(  # used when jax_distributed (or detected)
      coordinator_address="", num_processes=0, process_id=-1, local_device_ids=""))
  # --- end parallel ---
  return c


def dataclass_from_config(cls, cfg, **overrides):
  """An instance of the dataclass ``cls`` from the same-named keys of a ConfigDict /
  mapping / object; missing keys keep their defaults, other keys are ignored."""
  import dataclasses
  from collections.abc import Mapping
  kw = {}
  for field in dataclasses.fields(cls):
    if isinstance(cfg, Mapping) or hasattr(cfg, "keys"):
      if field.name in cfg:
        kw[field.name] = cfg[field.name]
    elif hasattr(cfg, field.name):
      kw[field.name] = getattr(cfg, field.name)
  kw.update(overrides)
  try:
    return cls(**kw)
  except (TypeError, ValueError) as e:  # a bad value: name the config section and key
    raise InputError(f"config ({cls.__name__}): {e}") from None


def expand_workdir(path: str, workdir: str) -> str:
  """``path`` with "{workdir}" replaced by ``workdir`` (an error if that is empty)."""
  path = str(path)
  if "{workdir}" in path:
    if not workdir:
      raise InputError(f"{path!r} uses {{workdir}} but config.workdir is empty")
    path = path.replace("{workdir}", str(workdir))
  return path


def expand(path: str, config) -> str:
  """``path`` with "{workdir}" replaced by ``config.workdir``."""
  return expand_workdir(path, config.workdir)


def fingerprint(settings) -> str:
  """A short digest of JSON-able settings: what a resumed run must share with the run
  that wrote its checkpoints / rows / summaries."""
  import hashlib
  import json
  text = json.dumps(settings, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_dir(config) -> str:
  if config.model_dir:
    return expand(config.model_dir, config)
  if not config.workdir:
    raise InputError("set --config.workdir (or --config.model_dir)")
  return f"{config.workdir}/model"


def parse_size(text: str) -> int:
  """'2GB' / '500MB' / '1024' -> bytes."""
  t = str(text).strip().upper()
  for unit, mult in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024), ("B", 1)):
    if t.endswith(unit):
      try:
        return int(float(t[: -len(unit)]) * mult)
      except ValueError:
        break
  try:
    return int(t)
  except ValueError:
    raise InputError(f"config max_shard_size={text!r}: expected e.g. '2GB', '500MB' or bytes")
