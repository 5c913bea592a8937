"""Shared defaults for every configs/*.py file (one ConfigDict, every key the code reads).

Config files call ``base_config()`` and override what differs; the CLI overrides
further with ``--config.key=value``. The sections the library's config dataclasses read
(``decode``, ``examples``, ``loss``, ``optim``, ``pretrain.optim``, ``mesh.rules``) are
generated from those dataclasses and constants, so a default exists in one place; where
a mode's default deliberately differs from the library's (decoding temperature, the
pretraining optimiser), the difference is written next to the dataclass it overrides.
Path-valued keys may contain "{workdir}" (replaced by config.workdir).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import types

import ml_collections


def config_module(path, relative_to: str | None = None) -> types.ModuleType:
  """The config file ``path`` loaded as a module, as the CLI loads it (``relative_to``:
  a file whose directory a relative ``path`` starts from, e.g. a config's ``__file__``)."""
  if relative_to is not None:
    path = os.path.join(os.path.dirname(os.path.abspath(relative_to)), path)
  name = "_t3d_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def section(cls, skip=(), extra=None, **overrides) -> ml_collections.ConfigDict:
  """A ConfigDict of the fields of dataclass ``cls`` with their defaults, but for
  ``skip`` (fields the code sets, not the config); ``overrides`` must name fields;
  ``extra`` adds keys the section carries beside the dataclass's."""
  values = {f.name: f.default for f in dataclasses.fields(cls) if f.name not in skip}
  bad = sorted(set(overrides) - set(values))
  if bad:
    raise ValueError(f"{cls.__name__} has no field {bad[0]!r} to override")
  values.update(overrides)
  missing = sorted(k for k, v in values.items() if v is dataclasses.MISSING)
  if missing:
    raise ValueError(f"{cls.__name__}.{missing[0]} has no default: skip it or override it")
  values.update(extra or {})
  return ml_collections.ConfigDict(values)


def base_config() -> ml_collections.ConfigDict:
  from t3d_jax.distill.examples import ExampleConfig
  from t3d_jax.distill.losses import LossConfig
  from t3d_jax.models.numerics import Numerics
  from t3d_jax.sampling import config as sampling_config
  from t3d_jax.sharding import DEFAULT_RULES
  from t3d_jax.train.pretrain import PRETRAIN_OPTIM, PretrainExamples
  from t3d_jax.train.trainer import OptimConfig

  c = ml_collections.ConfigDict()
  c.mode = ""               # a stage of t3d_jax/modes/registry.py
  c.workdir = ""            # every mode writes under here
  c.seed = 0                # every stage's seed unless its own <stage>.seed >= 0
  c.overwrite = False       # allow replacing a non-empty output dir
  c.jax_distributed = False  # call jax.distributed.initialize() (multi-host TPU/GPU)
  c.force = False           # rerun a finished stage of a pipeline with other keys

  # what the answers are graded with (t3d_jax/tasks): math | words (the demo task)
  c.task = ml_collections.ConfigDict(dict(
      name="math",
      num_train=4096, num_test=128,   # task mode (words): rows written under <workdir>/task
      min_words=2, max_words=4))      # categories (= blocks) per question
  # pipeline mode: these modes in order, each skipped/resumed where its output exists
  # variants: {name: {section: {key: value}}}: the distill stage runs once per variant,
  # as distill run <name> with those keys changed (e.g. {"lr3": {"optim": {"lr": 3e-3}}});
  # {} = one run, distill.name
  c.pipeline = ml_collections.ConfigDict(dict(stages=(), variants={}))

  # convert: HF dir -> orbax model dir
  c.hf_dir = ""
  c.model_dir = ""          # default: <workdir>/model
  c.param_dtype = ""        # "" keeps the checkpoint's dtype; float32 | bfloat16 casts

  # export: orbax model dir -> HF dir
  c.export_dir = ""         # default: <workdir>/hf_export
  c.export_dtype = ""       # "" keeps the param dtype
  c.max_shard_size = "2GB"

  # tokenizer: '' = the model dir's hf_meta/ (convert copies the HF tokenizer there);
  # pretrain from scratch: <workdir>/tokenizer (what the tokenizer / task modes write)
  c.tokenizer_dir = ""
  # tokenizer mode (t3d_jax/modes/tokenizer.py): char | bpe over these JSONL files
  c.tokenizer = ml_collections.ConfigDict(dict(
      kind="char", data=(),     # () = (pretrain.data,), read with pretrain's field names
      vocab_size=512, model_max_length=4096))   # vocab_size: bpe only

  # the architecture of a model trained from scratch (pretrain without init) and of a
  # memory plan (bench memory); converted models bring their own (sdar_config.json).
  # vocab_size 0: the tokenizer's size (pretrain) / unknown (plan from the model dir).
  # family: sdar (block-causal), llada or dream (bidirectional; t3d_jax/models/family.py)
  c.arch = ml_collections.ConfigDict(dict(
      family="sdar", vocab_size=0, hidden_size=128, intermediate_size=384, num_layers=2, num_heads=4,
      num_kv_heads=2, head_dim=32, rope_theta=10000.0, rms_norm_eps=1e-6,
      tie_word_embeddings=False, attention_bias=False))

  # model numerics used by training modes (the architecture comes from the model dir)
  c.model = section(Numerics)   # t3d_jax/models/numerics.py: dtype, param_dtype, remat, attention

  # pretrain: question/answer pairs -> model dir (masked-diffusion objective; SFT with init)
  c.pretrain = ml_collections.ConfigDict(dict(
      data="", question_field="question", answer_field="answer", limit=0,
      use_tfds=False, tfds_dir="",
      init="",                 # '' = random weights of `arch`; else a model dir / HF dir
      mask_eps=PretrainExamples.mask_eps,    # t ~ U(mask_eps, 1] per example
      max_gen_length=512, length_bucket=8, global_batch=32, micro_batch=32,
      num_epochs=1, max_steps=0, log_every=10, checkpoint_every=200, keep_checkpoints=2,
      async_checkpoint=True,
      # > 0: every this many updates (and last) decode eval_questions held-out training
      # questions at full step (decode section), grade them (task.name), log the accuracy
      eval_every=0, eval_questions=128,
      target_accuracy=0.0,     # > 0: stop once the held-out accuracy reaches it (max_steps caps)
      seed=-1))                # this stage's seed (-1: config.seed); so for every stage
  c.pretrain.optim = section(OptimConfig, skip=("total_steps",), **PRETRAIN_OPTIM)

  # --- decoding, shared by rollout and eval (t3d_jax/sampling) ---
  c.prompt_template = ""    # '' = tokenizer chat template on question + math instruction;
                            # else a string with {question} used verbatim
  # DecodeConfig's fields (t3d_jax/sampling/config.py: semantics there), with the
  # released teacher setting for rollout and eval (CONFIG_OVERRIDES), plus batching keys
  c.decode = section(sampling_config.DecodeConfig, skip=sampling_config.TOKENIZER_FIELDS,
                     extra=sampling_config.BATCHING_DEFAULTS,
                     **sampling_config.CONFIG_OVERRIDES)
  # rollout: question/answer JSONL -> trajectories JSONL (t3d_jax/modes/rollout.py)
  c.rollout = ml_collections.ConfigDict(dict(
      data="gsm8k_train",      # gsm8k_train | gsm8k_test | math500 | a question/answer JSONL
      question_field="question", answer_field="answer",
      limit=0,                 # first N questions (0 = all)
      use_tfds=False, tfds_dir="",  # read through the offline TFDS builder (default <workdir>/tfds)
      num_samples=1,           # samples per question
      output="",               # default <workdir>/trajectories.jsonl
      chunk_prompts=256,       # questions per chunk (rows are appended per chunk, resumable)
      plot_trajectories=4,     # step_map heat-map of the first N rows (0 = none)
      # the teacher's accuracy (its samples graded with task.name) below this stops the
      # pipeline after the rollout (0 = report only; --config.force=True goes on anyway)
      min_teacher_accuracy=0.0,
      seed=-1))
  # eval: models x decoding settings -> accuracy, length, NFE, TPF, tokens/s, AUP
  c.eval = ml_collections.ConfigDict(dict(
      data="gsm8k_test", question_field="question", answer_field="answer",
      limit=0, use_tfds=False, tfds_dir="",
      models=(),               # ("name=path", ...); () = ("model=<model_dir>",)
      tokens_per_forward=(1, 2, 4),            # with decode.block_size; each must divide it
      strategies=("low_confidence_static",),   # one curve per model x strategy
      thresholds=(),           # low_confidence_dynamic sweep: one setting each (<= b steps)
      grade_timeout_s=5.0,     # per response (code: the program's CPU and wall limit)
      # code: run model-written programs even where the kernel enforces no file-system
      # rules (no Landlock): only the audit hook would contain them
      allow_unsandboxed=False,
      num_samples=1,           # samples per question (> 1: pass@k, unbiased estimator)
      output_dir="",           # default <workdir>/eval
      seed=-1))
  # compare: eval results of models named <method>_s<seed>, grouped (t3d_jax/modes/compare.py)
  c.compare = ml_collections.ConfigDict(dict(base="base"))   # the base model's eval name
  # --- end decoding ---

  # distill: trajectories -> T3D student (docs/method.md §2-§3)
  c.distill = ml_collections.ConfigDict(dict(
      data="",                 # trajectories JSONL (rollout output, dLLM-RL layout)
      name="",                 # the run: <workdir>/distill/<name>/ (checkpoints, tb, metrics);
                               # "": every pipeline.variants entry, else one run "student"
      method="t3d",            # t3d | ddo | naive_td | sft | dparallel (distill/methods.py)
      student_dir="",          # default <workdir>/distill/<name>/model: the student model dir
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
      refresh_every=0,         # > 0: the student re-decodes the prompts every this many rounds
      refresh_filter=False,    # True: a refreshed trajectory is kept only when graded correct
      filter_correct=False,    # True: train only on the trajectories task.name grades correct
      allow_other_block=False,  # train at an examples.block_size the rollout did not use
      log_every=1,
      checkpoint_every=50,
      keep_checkpoints=3,
      async_checkpoint=True,
      seed=-1))
  c.examples = section(ExampleConfig, block_size=0)         # t3d_jax/distill/examples.py
  # examples.block_size 0: distill trains at the block the trajectories were decoded with
  # (rollout records it; another one needs distill.allow_other_block), pretrain at
  # decode.block_size: one block size, decode's
  c.loss = section(LossConfig, skip=("block_size",))        # block_size: examples.block_size
  c.optim = section(OptimConfig, skip=("total_steps",))     # total_steps: the schedule's
  # --- parallel (t3d_jax/sharding.py, t3d_jax/distributed.py): mesh, rules, multi-host ---
  c.mesh = ml_collections.ConfigDict(dict(
      shape=ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)),  # -1: the rest
      # (logical axis, mesh axis | tuple of mesh axes | None); unlisted names replicate
      rules=DEFAULT_RULES,
      tpu=""))                # named slice for the memory plan, e.g. v4-8, v5p-16
  c.distributed = ml_collections.ConfigDict(dict(  # used when jax_distributed (or detected)
      coordinator_address="", num_processes=0, process_id=-1, local_device_ids=""))
  # --- end parallel ---
  return c


def library_defaults() -> dict:
  """Every config key's library default (:func:`base_config`) as JSON: the ``defaults``
  of ``config_keys.differences`` for records whose sections are config sections."""
  from t3d_jax.config_keys import as_json
  return as_json(base_config().to_dict())
