"""The CPU demo (README's main command): python -m t3d_jax.main --config configs/demo.py

``configs/demo.py:sort`` runs the same recipe on the second synthetic task (sort with
ties, t3d_jax/tasks/sort.py; default workdir workdir/demo_sort).

One pipeline in <workdir> (default workdir/demo), every stage resumable and runnable
alone with --config.mode=<stage>:

  task      the synthetic category-words task (t3d_jax/tasks/words.py) + char tokenizer
  pretrain  a tiny SDAR-style model trained from scratch with the block-diffusion loss
  rollout   the base model's own full-step trajectories (1 token per forward, block 4)
  distill   T3D (DDO + path loss, self-play rounds, random block masks, on-policy
            refresh) on those trajectories, 5 distill seeds: runs t3d_s0 .. t3d_s4
  eval      base and the 5 students at 1, 2 and 4 tokens per forward on held-out
            questions: table, accuracy_vs_tpf.png
  compare   mean ± sd over the seeds: accuracy, gap closure, full-step cost (compare/)
"""
from t3d_jax.config_base import base_config
from t3d_jax.tasks import TASKS

SEEDS = (0, 1, 2, 3, 4)


def get_config(task: str = "words"):
  synthetic = TASKS[task].synthetic if task in TASKS else None
  if synthetic is None:
    built = ", ".join(n for n, t in TASKS.items() if t.synthetic)
    raise ValueError(f"configs/demo.py:{task}: the demo runs a synthetic task ({built})")
  c = base_config()
  c.mode = "pipeline"
  c.workdir = "workdir/demo" if task == "words" else f"workdir/demo_{task}"
  c.pipeline.stages = ("task", "pretrain", "rollout", "distill", "eval", "compare")
  c.pipeline.variants = {f"t3d_s{k}": {"distill": {"seed": k}} for k in SEEDS}
  c.prompt_template = synthetic.prompt_template  # "{question}=": one tag per prompt block
  c.task.name = task
  c.task.num_train, c.task.num_test = 4096, 128
  c.task.min_words = c.task.max_words = 4     # 4 answer blocks + the EOS block

  c.examples.block_size = 4
  p = c.pretrain
  p.data = "{workdir}/task/train.jsonl"
  c.arch.update(vocab_size=synthetic.vocab_size, hidden_size=128, intermediate_size=384,
                num_layers=2, num_heads=4, num_kv_heads=2, head_dim=32)
  p.global_batch = p.micro_batch = 64
  p.max_steps = 600
  p.length_bucket = 4
  p.log_every, p.checkpoint_every = 50, 200
  p.optim.lr = 3e-3
  if task != "words":  # pretrain until it can do the task (words keeps its measured table)
    p.eval_every, p.target_accuracy, p.max_steps = 250, 0.97, 3000
    # 8x the questions: on 4096 the sort base memorises each question's drawn tie order
    # (train loss 0.11 at 58 epochs) and answers 38 % of held-out questions at 3600 updates
    c.task.num_train = 32768

  d = c.decode                                # teacher: 1 token per forward
  d.block_size, d.denoising_steps = 4, 4
  d.prompt_mode = "aligned"                   # blocks start at the answer, as in training
  d.max_new_tokens = 20
  d.batch_size = 64
  d.width_multiple = 4

  c.rollout.data = "{workdir}/task/train.jsonl"
  c.rollout.limit = 512
  c.rollout.chunk_prompts = 512
  c.rollout.min_teacher_accuracy = 0.9        # no distillation of a teacher that fails

  t = c.distill
  t.data = "{workdir}/trajectories.jsonl"
  t.global_batch = t.micro_batch = 32
  t.max_steps = 300
  t.length_bucket = 4
  t.max_gen_length = 20
  t.round_interval = 25
  t.log_every, t.checkpoint_every = 10, 50
  # On-policy refresh: every 4 rounds (100 updates) the student re-decodes the 512
  # questions at full steps and the trajectories the grader passes replace the current
  # ones; and random masks over each block (not the trajectory's own states). Offline
  # with trajectory masks the student loses ~29 points at full step (README, "The demo").
  t.refresh_every = 4
  t.refresh_filter = True
  c.examples.mask_strategy = "random"
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 10
  # Mask ratios 1, .75, .5, .25 drawn uniformly (released: prob ~ r^8, mostly fully masked
  # blocks). At this size the released weighting costs full-step accuracy (README, demo).
  c.examples.mask_ratio_exponent = 0.0

  c.eval.data = "{workdir}/task/test.jsonl"
  c.eval.models = ("base={workdir}/model", "distill:*")
  c.eval.tokens_per_forward = (1, 2, 4)
  return c


def bidirectional(family: str, seeds=(0, 1, 2)):
  """The words demo with a tiny model of a bidirectional ``family`` (configs/demo_llada.py,
  demo_dream.py): workdir workdir/demo_<family>, 3 distill seeds, pretraining to a
  held-out target: without SDAR's q/k norm the tiny LLaDA learns the words far slower
  (loss 1.25 after the SDAR demo's 600 updates, where SDAR has 0.46, and 0 % of the
  rollout's answers right), so a fixed count would guess."""
  c = get_config()
  c.workdir = f"workdir/demo_{family}"
  c.arch.family = family
  c.pipeline.variants = {f"t3d_s{k}": {"distill": {"seed": k}} for k in seeds}
  p = c.pretrain
  p.eval_every, p.target_accuracy, p.max_steps = 200, 0.97, 4000
  return c
