"""Bad input through the real CLI: the whole stderr is one line naming the file, key or
value (exit 2, no traceback), and a first run that fails before any output leaves no
record that would refuse the corrected command."""
import json

import pytest

from decode_setup import cli
from tiny_setup import make_model_dir


def only_line(r) -> str:
  lines = r.stderr.strip().splitlines()
  assert r.returncode == 2 and len(lines) == 1, (r.returncode, r.stderr[-3000:])
  return lines[0]


@pytest.mark.parametrize("flags, line", [
    (("--config.distill.max_stepz=1",),
     "error: --config.distill.max_stepz: no such config key (did you mean distill.max_steps?)"),
    (("--config.distil.max_steps=1",),
     "error: --config.distil.max_steps: no such config key (did you mean distill?)"),
    (("--config.seed.x=1",), "error: --config.seed.x: config key seed is a value, not a section"),
    (("--config.distill.max_steps=abc",),
     "error: flag --config.distill.max_steps=abc: invalid literal for int() with base 10: 'abc'"),
])
def test_bad_flags_are_one_line(flags, line):
  assert only_line(cli("distill", *flags)) == line


def test_missing_config_file_is_one_line():
  assert only_line(cli("no_such_config")) == (
      "error: --config=configs/no_such_config.py: no such file")


def test_truncated_safetensors_names_the_file_and_tensor(tmp_path):
  make_model_dir(tmp_path)
  shard = next((tmp_path / "hf").glob("*.safetensors"))
  data = shard.read_bytes()
  shard.write_bytes(data[:len(data) // 2])
  line = only_line(cli("convert", f"--config.hf_dir={tmp_path / 'hf'}",
                       f"--config.workdir={tmp_path / 'w'}"))
  assert line.startswith(f"error: {shard}, tensor 'model.embed_tokens.weight': unreadable "
                         "safetensors (")
  assert line.endswith("the file is truncated or corrupt: copy or download it again")
  assert not (tmp_path / "w" / "model").exists()


def test_a_failed_run_records_nothing_and_only_a_stages_own_keys_are_compared(tmp_path):
  """The demo's pretrain stage before its task stage: its input is missing; the retry with
  another key gets the same error, not "ran with a different config". A finished stage
  records its own keys: other values of them are refused, other stages' keys are not."""
  w = tmp_path / "w"
  missing = (f"error: pretrain: {w}/task/train.jsonl does not exist: run "
             "--config.mode=task first")
  assert only_line(cli("demo", f"--config.workdir={w}", "--config.mode=pretrain")) == missing
  assert not (w / "t3d_config.json").exists()
  assert only_line(cli("demo", f"--config.workdir={w}", "--config.mode=pretrain",
                       "--config.seed=1")) == missing
  r = cli("demo", f"--config.workdir={w}", "--config.mode=task", "--config.seed=1")
  assert r.returncode == 0, r.stderr[-2000:]
  record = json.loads((w / "t3d_config.json").read_text())
  assert list(record["stages"]) == ["task"] and record["stages"]["task"]["seed"] == 1
  line = only_line(cli("demo", f"--config.workdir={w}", "--config.mode=task"))
  assert line == (f"error: {w}: its task stage ran with a different config (1 keys differ: "
                  "seed: 1 -> 0); use another --config.workdir or --config.force=True")
  # keys the task stage does not read: no refusal
  r = cli("demo", f"--config.workdir={w}", "--config.mode=task", "--config.seed=1",
          "--config.eval.limit=3", "--config.pretrain.optim.lr=0.5")
  assert r.returncode == 0 and "exist, kept" in r.stdout, r.stderr[-2000:]


@pytest.mark.parametrize("env, libtpu, chips, gpu, want", [
    ({}, True, 0, False, "cpu"),             # jax[tpu] on a CPU machine: skip the probe
    ({}, True, 4, False, None),              # a TPU VM: JAX picks the TPU
    ({}, False, 0, False, None),             # no libtpu: nothing to skip
    ({}, True, 0, True, None),               # a GPU plugin: JAX picks
    ({"JAX_PLATFORMS": "tpu"}, True, 0, False, None)])  # the user's choice stands
def test_platforms_without_tpu(env, libtpu, chips, gpu, want):
  from t3d_jax.main import platforms_without_tpu
  assert platforms_without_tpu(env, libtpu, chips, gpu) == want
