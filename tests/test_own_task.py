"""README "Bring your own task", as written there: a small task of our own (add two
digits), its own grader function, the README's command (shortened) through the real CLI:
tokenizer -> pretrain -> rollout -> distill -> eval, graded by that function."""
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHORT = ("--config.pretrain.max_steps=40", "--config.pretrain.global_batch=32",
         "--config.pretrain.micro_batch=32", "--config.pretrain.checkpoint_every=40",
         "--config.arch.hidden_size=32", "--config.arch.intermediate_size=64",
         "--config.arch.num_heads=2", "--config.arch.num_kv_heads=1",
         "--config.arch.head_dim=16", "--config.rollout.limit=32",
         "--config.decode.batch_size=32", "--config.decode.max_new_tokens=8",
         "--config.distill.max_gen_length=8", "--config.distill.max_steps=4",
         "--config.distill.global_batch=16", "--config.distill.micro_batch=16",
         "--config.distill.checkpoint_every=4",
         # 40 updates make no competent teacher: measured and reported, not gated here
         # (tests/test_teacher_checks.py tests the gate)
         "--config.rollout.min_teacher_accuracy=0")
GRADER = '''
def grade(question, answer, response):
  """Right when the first number in the response is the sum (a user's own rule)."""
  digits = "".join(c for c in response.strip() if c.isdigit())
  return digits == answer, f"read {digits!r}"
'''


def readme_command() -> list[str]:
  """The one command of README's "Bring your own task" section."""
  text = (REPO / "README.md").read_text()
  section = text.split("### Bring your own task", 1)[1].split("\n#", 1)[0]
  block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
  cmd = block.replace("\\\n", " ").strip()
  assert cmd.count("python -m t3d_jax.main") == 1, cmd
  return shlex.split(cmd)


def readme_python() -> str:
  """The Python block of README's "From Python (notebooks)" section."""
  text = (REPO / "README.md").read_text()
  section = text.split("### From Python (notebooks)", 1)[1].split("\n#", 1)[0]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_own_task_end_to_end_as_in_readme(tmp_path):
  import random
  rng = random.Random(0)
  rows = [dict(question=f"{a}+{b}", answer=str(a + b))
          for a, b in ((rng.randrange(10), rng.randrange(10)) for _ in range(300))]
  cmd = readme_command()
  work = Path(next(a.split("=", 1)[1] for a in cmd if a.startswith("--config.workdir=")))
  w = tmp_path / work
  (w / "data").mkdir(parents=True)
  (w / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:280]))
  (w / "data" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[280:]))
  (tmp_path / "my_grader.py").write_text(GRADER)
  (tmp_path / "configs").symlink_to(REPO / "configs")  # the README runs from the repo root
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  assert cmd[0] == "python"
  r = subprocess.run([sys.executable] + cmd[1:] + list(SHORT), cwd=tmp_path, env=env,
                     capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-4000:]
  tok = json.loads((w / "tokenizer" / "tokenizer.json").read_text())
  assert {"+", "=", "7"} <= set(tok["model"]["vocab"])  # data and prompt characters
  s = json.loads((w / "eval" / "summary.json").read_text())
  assert {(x["model"], x["tokens_per_forward"]) for x in s["results"]} == {
      (m, t) for m in ("base", "t3d") for t in (1, 2, 4)}
  for x in s["results"]:
    assert x["grader"] == "my_grader:grade" and x["grader_errors"] == 0
    samples = [json.loads(line) for line in
               (w / "eval" / "samples" / x["model"] / f"{x['setting']}.jsonl").open()]
    assert all(row["reason"].startswith("read ") for row in samples)
    assert x["accuracy"] == sum(row["correct"] for row in samples) / len(samples)
  # README "From Python (notebooks)", as written, in the same directory after the command
  nb = readme_python()
  assert '{"rollout.limit": 64}' in nb   # shortened as the command is: no teacher gate
  (tmp_path / "nb.py").write_text(nb.replace(
      '{"rollout.limit": 64}', '{"rollout.limit": 64, "rollout.min_teacher_accuracy": 0}'))
  r = subprocess.run([sys.executable, "nb.py"], cwd=tmp_path, env=env, capture_output=True,
                     text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-4000:]
  nb = tmp_path / "runs" / "nb"
  assert len((nb / "trajectories.jsonl").read_text().splitlines()) == 64
  metrics = (nb / "distill" / "lr3" / "metrics.jsonl").read_text().splitlines()
  assert json.loads(metrics[-1])["step"] == 100
  s = json.loads((nb / "eval" / "summary.json").read_text())
  assert {(x["model"], x["tokens_per_forward"]) for x in s["results"]} == {
      (m, t) for m in ("base", "t3d") for t in (1, 2, 4)}
  assert s["models"]["t3d"] == "runs/nb/distill/lr3/model"  # relative, as given
  assert all(x["grader"] == "my_grader:grade" for x in s["results"])
  assert "static_b4_tpf4" in r.stdout and r.stdout.splitlines()[0].strip()  # table, answer


def test_a_character_the_tokenizer_lacks_is_an_error_naming_the_row(tmp_path):
  import pytest
  from decode_setup import load_config
  from t3d_jax.errors import InputError
  from t3d_jax.modes import pretrain, tokenizer
  data = tmp_path / "train.jsonl"
  data.write_text('{"question": "1+2", "answer": "3"}\n{"question": "4+4", "answer": "8"}\n')
  c = load_config("own_task")
  c.workdir, c.pretrain.data = str(tmp_path / "w"), str(data)
  c.pretrain.eval_every, c.pretrain.target_accuracy = 0, 0.0   # two rows: none to hold out
  tokenizer.run(c)
  other = tmp_path / "other.jsonl"
  other.write_text('{"question": "1+2", "answer": "3"}\n{"question": "5*5", "answer": "25"}\n')
  c.pretrain.data = str(other)
  with pytest.raises(InputError, match=r"other.jsonl, row 2: character '5' is not in the "
                     r"tokenizer .*--config.mode=tokenizer"):
    pretrain.run(c)
  # trajectories the tokenizer cannot encode (another task's): re-tokenised outputs and
  # stored prompts are errors naming the row, never <unk> in training
  from t3d_jax.data.tokenizer import load_tokenizer
  from t3d_jax.distill.data import load_trajectory_samples
  tok = load_tokenizer(tmp_path / "w" / "tokenizer")
  traj = tmp_path / "traj.jsonl"
  good = dict(question="1+2", answer="3", prompt="1+2=", step_map=[[1]], response_ids=[[4]],
              full_output=["3"])
  for row, where in ((dict(good, full_output=["35"]), "row 2, full_output 0"),
                     (dict(good, prompt="5+2="), "row 2, prompt")):
    traj.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(InputError, match=rf"traj.jsonl, {where}: character '5' is not in "):
      load_trajectory_samples(traj, tok, retokenize=True)
  c.tokenizer.kind = "sentencepiece"
  with pytest.raises(InputError, match="tokenizer.kind='sentencepiece' is not one of char, bpe"):
    tokenizer.run(c)
