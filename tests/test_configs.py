"""Every configs/*.py loads (as the CLI does) and builds its abstract state; the memory
plan runs for the SDAR configs and its numbers follow from the shapes and the mesh."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import jax
import ml_collections
import pytest

from t3d_jax import sharding
from t3d_jax.models import family as families
from t3d_jax.train import sharded
from t3d_jax.bench import memory
from t3d_jax.config_base import config_module
from t3d_jax.train.trainer import OptimConfig, make_optimizer
from t3d_jax.errors import InputError
from t3d_jax.models.sdar import abstract_params

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.py"))


def load(path) -> ml_collections.ConfigDict:
  c = config_module(path).get_config()
  c.lock()
  return c


def test_configs_exist():
  names = {p.stem for p in CONFIGS}
  assert {"sdar_1p7b_math", "sdar_4b_math", "demo"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_builds_abstract_state(path):
  c = load(path)
  assert c.mode
  n = memory.tpu_slice(c.mesh.tpu).devices if c.mesh.tpu else jax.device_count()
  mesh = sharding.make_abstract_mesh(dict(c.mesh.shape), n)
  try:
    cfg = memory.model_config(c)
  except InputError:  # convert/export: the architecture comes from the HF / model dir
    assert not c.arch.vocab_size
    return
  boxed = abstract_params(cfg)
  rules = sharding.make_rules(c.mesh.rules, mesh, sharding.logical_names(boxed))
  specs = sharding.param_specs(boxed, rules, mesh)
  assert jax.tree.structure(specs) == jax.tree.structure(
      boxed, is_leaf=lambda x: hasattr(x, "names"))
  if "optim" in c:
    state = sharded.abstract_train_state(cfg, make_optimizer(OptimConfig.from_config(c.optim)))
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    adam = state.opt_state[1][0]
    assert sum(x.size for x in jax.tree.leaves(adam.mu)) == n_params
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(state))


@pytest.mark.parametrize("name,params_b,devices,hosts", [
    ("sdar_1p7b_math", 1.72, 4, 1), ("sdar_4b_math", 4.02, 8, 2)])
def test_memory_plan(name, params_b, devices, hosts):
  c = load(ROOT / "configs" / f"{name}.py")
  p = memory.plan(c)
  assert round(p["n_params"] / 1e9, 2) == params_b
  assert p["devices"] == devices and p["slice"].hosts == hosts
  fsdp = p["mesh"]["fsdp"]
  assert fsdp == devices  # data=1, fsdp=-1
  rows = p["rows"]
  # fp32 params sharded over fsdp on every matrix (norms replicated: < 0.1% extra)
  assert rows["params"] == pytest.approx(4 * p["n_params"] / fsdp, rel=1e-3)
  assert rows["params"] >= 4 * p["n_params"] / fsdp
  assert rows["optimizer state"] == pytest.approx(2 * rows["params"], rel=1e-6)  # mu + nu
  assert rows["reference"] == rows["params"]
  assert p["total"] == sum(rows.values())
  assert p["total"] < 0.9 * p["hbm"]
  text = memory.format_plan(p)
  assert "fits" in text and "activations =" in text


def test_memory_plan_tensor_axis_and_slices():
  c = load(ROOT / "configs" / "sdar_4b_math.py")
  base = memory.plan(c)
  with c.unlocked():
    c.mesh.shape.fsdp, c.mesh.shape.tensor = 4, 2
    c.distill.micro_batch = 4  # still one example per data-parallel rank
  p = memory.plan(c)
  assert p["local_batch"] == 1 and p["accumulation"] == 8
  assert p["mesh"] == {"data": 1, "fsdp": 4, "tensor": 2}
  assert p["rows"]["params"] == pytest.approx(base["rows"]["params"], rel=1e-3)
  assert p["rows"]["activations (estimate)"] < base["rows"]["activations (estimate)"]
  assert memory.tpu_slice("v5litepod-16").devices == 16
  assert memory.tpu_slice("v4-32").hosts == 4
  with pytest.raises(InputError, match="TPU slice 'v9-8'"):
    memory.tpu_slice("v9-8")
  with c.unlocked():
    c.mesh.shape.fsdp, c.mesh.shape.tensor = 3, 1
  with pytest.raises(InputError, match="product 3 does not equal the device count 8"):
    memory.plan(c)


def test_memory_cli_runs_for_4b():
  out = subprocess.run([sys.executable, "-m", "t3d_jax.bench", "memory", "--config",
                        str(ROOT / "configs" / "sdar_4b_math.py"), "--tpu", "v5p-32",
                        "--config.distill.micro_batch=16"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, out.stderr
  assert "v5p-32 (16 devices, 4 host(s)); mesh data=1 x fsdp=16 x tensor=1" in out.stdout
  assert "optimizer state" in out.stdout


def test_aot_without_tpu_compiler_says_why():
  if importlib.util.find_spec("libtpu") is not None:
    pytest.skip("libtpu is importable: --aot would really compile (minutes)")
  c = load(ROOT / "configs" / "sdar_4b_math.py")
  assert memory.topology_name(memory.tpu_slice(c.mesh.tpu)) == "v5p:2x2x2"
  assert memory.topology_name(memory.tpu_slice("v5litepod-8")) == "v5e:2x4"
  msg = memory.aot_compile(c)
  assert msg.startswith("AOT compile for 'v5p:2x2x2' unavailable here: RuntimeError")
  out = subprocess.run([sys.executable, "-m", "t3d_jax.bench", "memory", "--config",
                        str(ROOT / "configs" / "sdar_4b_math.py"), "--aot", "--fit", "seq_len"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 2 and "unavailable here" in out.stderr, out.stderr


def test_base_config_defaults_are_the_dataclasses():
  """The sections the code reads through its config dataclasses give exactly the
  dataclasses' own defaults (but the deliberate mode overrides named beside them), so a
  default cannot be written twice and drift."""
  from t3d_jax.config_base import base_config
  from t3d_jax.data.tokenizer import SpecialIds
  from t3d_jax.distill.examples import ExampleConfig
  from t3d_jax.distill.losses import LossConfig
  from t3d_jax.sampling import config as sc
  from t3d_jax.train.pretrain import PRETRAIN_OPTIM, PretrainExamples
  c = base_config()
  assert c.examples.block_size == 0  # deliberate: the block the rollout / decode uses
  assert ExampleConfig.from_config(c.examples, block_size=c.decode.block_size) == ExampleConfig()
  assert LossConfig.from_config(c.loss) == LossConfig()
  assert OptimConfig.from_config(c.optim) == OptimConfig()
  assert OptimConfig.from_config(c.pretrain.optim) == OptimConfig(**PRETRAIN_OPTIM)
  assert PretrainExamples.from_config(c.examples, mask_eps=c.pretrain.mask_eps,
                                     block_size=c.decode.block_size) == PretrainExamples()
  assert tuple(c.mesh.rules) == sharding.DEFAULT_RULES
  ids = SpecialIds(vocab_size=100, mask_id=99, pad_id=0, eos_id=1, stop_ids=(1, 2))
  overrides = dict(sc.CONFIG_OVERRIDES, max_length=None)  # 0 in the config = none
  assert sc.DecodeConfig.from_config(c.decode, ids) == sc.DecodeConfig(
      mask_id=99, pad_id=0, stop_ids=(1, 2), **overrides)
  decode_keys = {f for f in sc.DecodeConfig.__dataclass_fields__} - set(sc.TOKENIZER_FIELDS)
  assert set(c.decode) == decode_keys | set(sc.BATCHING_DEFAULTS)
  # arch: every architecture field of SDARConfig (numerics live in config.model)
  import dataclasses
  from t3d_jax.models.sdar import SDARConfig
  assert set(c.model) == {"dtype", "param_dtype", "remat", "attention"}
  # (mask_token_id: a checkpoint's own mask id, from LLaDA / Dream config.json; a model
  # trained from scratch takes the tokenizer's); family: which config class
  assert set(c.arch) == ({f.name for f in dataclasses.fields(SDARConfig)} - set(c.model)
                         - {"mask_token_id"} | {"family"})
  assert c.arch.family in families.FAMILIES


def _leaves(d, prefix=""):
  for k, v in d.items():
    if isinstance(v, dict):
      yield from _leaves(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}", v


def test_every_path_key_expands_workdir():
  """Every path-valued key of base_config (found by its name: *_dir, data, init, output,
  models) is in workdir.PATH_KEYS, and each one expands "{workdir}"."""
  import re
  from t3d_jax.config_base import base_config
  from t3d_jax.workdir import PATH_KEYS, resolve_paths
  c = base_config()
  pathlike = {k for k, _ in _leaves(c.to_dict())
              if re.search(r"(^|\.)(\w+_dir|data|init|output|models)$", k)
              and not k.startswith("mesh.")}  # mesh.shape.data: an axis size
  assert pathlike == set(PATH_KEYS), (pathlike ^ set(PATH_KEYS))
  c.workdir = "/w"

  def value(key, workdir):  # tuple keys hold entries ("name=path" for eval.models)
    one = f"{workdir}/{key}"
    return ((f"m={one}",) if key == "eval.models" else
            (one,) if key == "tokenizer.data" else one)
  for key in PATH_KEYS:
    section, _, name = key.rpartition(".")
    (c[section] if section else c)[name] = value(key, "{workdir}")
  r = resolve_paths(c)
  for key in PATH_KEYS:
    section, _, name = key.rpartition(".")
    assert (r[section] if section else r)[name] == value(key, "/w"), key
  assert c.eval.output_dir == "{workdir}/eval.output_dir"  # the input is left as it was
  c.workdir = ""
  with pytest.raises(InputError, match="uses {workdir} but config.workdir is empty"):
    resolve_paths(c)
