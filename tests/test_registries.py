"""The registries that make each choice: stages (modes), distill methods, tasks and model
families. Each entry is what the code path reads, so these tests check the tables
themselves: every declared key exists, every declared input has a writer, a task's
prompt pieces and extraction, a family's config record, and the sampler's refusal of an
attention regime it does not decode."""
from pathlib import Path

import jax
import numpy as np
import pytest

from t3d_jax.config_base import base_config, config_module
from t3d_jax.config_keys import flatten
from t3d_jax.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def test_every_stage_declares_config_keys_that_exist():
  from t3d_jax.modes.registry import STAGES
  c = base_config()
  flat = set(flatten(c.to_dict()))
  for stage in STAGES.values():
    for key in stage.result_keys(c) + ("decode", "task.name"):  # refresh adds these two
      assert key in c or any(k == key or k.startswith(key + ".") for k in flat), \
          f"{stage.name}: {key}"


def test_every_demo_input_has_a_writer_in_the_demo_pipeline(tmp_path):
  """Each stage's inputs in the demo's workdir are written by an earlier stage of it (so
  a missing one names that stage), and the distill stage writes one student per seed."""
  from t3d_jax.modes.registry import STAGES, get, pipeline_stages
  from t3d_jax.workdir import Workdir
  c = config_module(REPO / "configs/demo.py").get_config()
  c.workdir = str(tmp_path)
  layout = Workdir(c)
  stages = pipeline_stages(c.pipeline.stages)
  for i, stage in enumerate(stages):
    for path in stage.inputs(c, layout):
      writers = [s.name for s in stages[:i]
                 if any(path == o or o in path.parents for o in s.outputs(c, layout))]
      assert writers, f"{stage.name}: nothing before it writes {path}"
  assert STAGES["distill"].outputs(c, layout) == [
      tmp_path / f"distill/t3d_s{k}/model" for k in range(5)]
  with pytest.raises(InputError, match="config pipeline.stages: 'convert' is not one of"):
    pipeline_stages(["task", "convert"])
  with pytest.raises(InputError, match="config.mode='trian' is not one of task, tokenizer"):
    get("trian")


def test_every_method_builds_its_loss_and_the_reference_rule():
  from t3d_jax.distill import methods
  from t3d_jax.distill.losses import LossConfig
  from t3d_jax.models.sdar import SDARConfig
  model = SDARConfig(32, 16, 32, 1, 2, 1, 8)
  for name, m in methods.METHODS.items():
    assert callable(m.loss(model, LossConfig(block_size=4), 1, 0)), name
  assert [n for n, m in methods.METHODS.items() if m.needs_reference] == ["t3d", "ddo"]
  with pytest.raises(InputError, match="distill.method='dpo' is not one of t3d, ddo"):
    methods.get("dpo")


def test_tasks_hold_their_prompt_pieces_and_extraction():
  from t3d_jax.data.code_sets import FENCE
  from t3d_jax.tasks import TASKS, load_task
  stub = 'def f(x):\n  """Twice x."""\n'
  code = load_task("code")
  assert code.prefix(stub) == FENCE + stub and code.prefix("Write f.") == ""
  assert "This is the problem:" in code.user_message(stub)
  assert load_task("math").prefix(stub) == ""
  assert load_task("math").extract("so \\boxed{42}.") == "42"
  assert load_task("exact").extract("  cat.  ") == "cat."
  assert [n for n, t in TASKS.items() if t.synthetic] == ["words", "sort"]
  train, test = TASKS["words"].synthetic.rows(base_config().task, 3)
  assert len(train) == 4096 and len(test) == 128


def test_a_family_config_record_round_trips_and_old_records_read_as_sdar():
  from t3d_jax.models import family
  from t3d_jax.models.sdar import SDARConfig
  cfg = SDARConfig(32, 16, 32, 1, 2, 1, 8, remat="dots")
  record = family.config_to_json(cfg)
  assert record["family"] == "sdar" and family.config_from_json(record) == cfg
  record.pop("family")  # a model dir written before families were recorded
  assert family.config_from_json(record) == cfg
  assert family.for_model_type("qwen3", "x").name == "sdar"
  with pytest.raises(InputError, match="x: unsupported model_type 'llama'; supported: qwen3"):
    family.for_model_type("llama", "x")


def test_the_decoder_is_chosen_by_the_family_attention():
  """make_generate picks the core of the family's attention (sampler.CORES): the block
  loop for SDAR, the canvas for LLaDA and Dream, each refusing the other's settings
  with one line."""
  from t3d_jax.models import dream, llada, sdar
  from t3d_jax.sampling import DecodeConfig, DecodeError, canvas, make_generate, sampler
  assert sampler.CORES == {"block_causal": sampler._generate,
                           "bidirectional": canvas.generate_core}
  dims = (32, 16, 32, 1, 2, 1, 8)
  with pytest.raises(DecodeError, match="cache='prefix'.*sdar's KV cache is exact"):
    make_generate(sdar.SDARConfig(*dims), DecodeConfig(mask_id=1, cache="prefix"))
  for cls in (llada.LLaDAConfig, dream.DreamConfig):
    with pytest.raises(DecodeError, match="max_new_tokens=6 is not a multiple of block_size=4"):
      make_generate(cls(*dims), DecodeConfig(mask_id=1, max_new_tokens=6))
  cfg = sdar.SDARConfig(*dims)
  params = sdar.init_params(cfg, jax.random.key(0))
  out = make_generate(cfg, DecodeConfig(mask_id=1, max_new_tokens=6))(
      params, np.full((1, 4), 5, np.int32), np.array([4]), jax.random.key(1))
  assert out["ids"].shape == (1, 6)
