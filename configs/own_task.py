"""Your own question/answer task, end to end (README "Bring your own task"):

  python -m t3d_jax.main --config configs/own_task.py --config.workdir=runs/mytask \\
      --config.task.name=my_grader:grade

reads <workdir>/data/train.jsonl and <workdir>/data/test.jsonl (one {"question": ...,
"answer": ...} object per line) and runs, each stage resumable and runnable alone with
--config.mode=<stage>:

  tokenizer  a character tokenizer over the data and the prompt (tokenizer.kind=bpe: BPE)
  pretrain   a small SDAR-style model trained from scratch on train.jsonl until it answers
             95 % of 128 held-out training questions at full step (graded by task.name;
             checked every 200 updates, at most 5000)
  rollout    its own full-step trajectories on the training questions; the teacher's
             accuracy is measured and below 80 % the pipeline stops here, saying so
  distill    T3D on those trajectories with the demo's recipe (random block masks, on-policy
             refresh: the student's trajectories the grader passes replace the teacher's)
             -> <workdir>/distill/student/model
  eval       base and student at 1, 2 and 4 tokens per forward on test.jsonl, graded by
             task.name (exact by default; package.module:function for your own grader)

The recipe is the demo's (configs/demo.py), sized for a few minutes on a laptop CPU.
"""
from t3d_jax.config_base import config_module


def get_config():
  c = config_module("demo.py", relative_to=__file__).get_config()
  c.workdir = "runs/own_task"
  c.pipeline.stages = ("tokenizer", "pretrain", "rollout", "distill", "eval")
  c.pipeline.variants = {}                   # one student (the demo distils 5 seeds)
  c.eval.models = ("base={workdir}/model", "t3d=distill:student")
  c.task.name = "exact"
  c.tokenizer.kind = "char"
  c.prompt_template = "{question}="          # what the model sees before its answer
  c.arch.vocab_size = 0                      # the tokenizer's size
  c.pretrain.data = c.rollout.data = "{workdir}/data/train.jsonl"
  c.eval.data = "{workdir}/data/test.jsonl"
  c.decode.max_new_tokens = 32
  c.distill.max_gen_length = 32
  p = c.pretrain     # a base that can do the task, without guessing a step count
  p.eval_every, p.eval_questions, p.target_accuracy, p.max_steps = 200, 128, 0.95, 5000
  c.rollout.min_teacher_accuracy = 0.8
  return c
