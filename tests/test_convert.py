"""HF checkpoints -> params -> orbax -> HF, checked against transformers and byte for byte."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.numpy import save_file

from hf_models import make_qwen3, torch_logits
from t3d_jax import checkpoint, masks
from t3d_jax.convert import (ConversionError, convert_hf_to_model_dir, export_model_dir_to_hf,
                             load_hf_params, load_params)
from t3d_jax.models import forward

REPO = Path(__file__).resolve().parents[1]


def all_tensors(d):
  d = Path(d)
  out = {}
  for f in sorted(d.glob("*.safetensors")):
    with safe_open(f, "np") as h:
      assert h.metadata() is None or h.metadata().get("format") == "pt"
      for k in h.keys():
        out[k] = h.get_tensor(k)
  return out


def assert_same_tensors(a, b):
  assert sorted(a) == sorted(b)
  for k in a:
    assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
    assert a[k].tobytes() == b[k].tobytes(), k


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
  """A 3-shard SDAR-typed checkpoint with remote-code and tokenizer side files."""
  d = tmp_path_factory.mktemp("sharded")
  model = make_qwen3(d, layers=3, max_shard_size="60KB", model_type="sdar")
  cfg = json.loads((d / "config.json").read_text())
  cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_sdar.SDARForCausalLM"}
  (d / "config.json").write_text(json.dumps(cfg))
  (d / "modeling_sdar.py").write_text("# remote code stand-in\n")
  (d / "tokenizer_config.json").write_text("{}\n")
  assert len(list(d.glob("*.safetensors"))) >= 3
  return d, model


def test_convert_orbax_roundtrip_is_exact(sharded, tmp_path):
  d, _ = sharded
  params, cfg, _ = load_hf_params(d)
  convert_hf_to_model_dir(d, tmp_path / "m")
  restored, cfg2 = load_params(tmp_path / "m")
  assert cfg2 == cfg
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               params, restored)
  meta = tmp_path / "m" / checkpoint.HF_META
  assert sorted(p.name for p in meta.iterdir()) == [
      "config.json", "generation_config.json", "modeling_sdar.py", "tokenizer_config.json"]


def test_export_is_byte_identical_and_loads_in_transformers(sharded, tmp_path):
  d, model = sharded
  convert_hf_to_model_dir(d, tmp_path / "m")
  out = export_model_dir_to_hf(tmp_path / "m", tmp_path / "hf", max_shard_bytes=50_000)
  assert_same_tensors(all_tensors(d), all_tensors(out))
  assert (out / "config.json").read_text() == (d / "config.json").read_text()
  assert (out / "modeling_sdar.py").is_file() and (out / "tokenizer_config.json").is_file()
  index = json.loads((out / "model.safetensors.index.json").read_text())
  files = set(index["weight_map"].values())
  assert len(files) >= 3 and all((out / f).is_file() for f in files)
  assert index["metadata"]["total_size"] == sum(v.nbytes for v in all_tensors(out).values())
  # transformers loads it (as qwen3: the stand-in remote code is not importable)
  cfg = json.loads((out / "config.json").read_text())
  cfg["model_type"] = "qwen3"
  cfg.pop("auto_map")
  (out / "config.json").write_text(json.dumps(cfg))
  reloaded = transformers.Qwen3ForCausalLM.from_pretrained(out).eval()
  ids = np.random.RandomState(0).randint(0, 300, (2, 9))
  pos = np.tile(np.arange(9), (2, 1))
  mask = np.asarray(masks.training_batch_mask(np.concatenate([ids[:, :3], ids[:, :6]], 1)[:, :9],
                                              3, 2, -1))
  np.testing.assert_allclose(torch_logits(reloaded, ids, mask, pos),
                             torch_logits(model, ids, mask, pos), atol=1e-6)
  params, cfg2 = load_params(tmp_path / "m")
  np.testing.assert_allclose(np.asarray(forward(params, cfg2, ids, mask, pos)),
                             torch_logits(reloaded, ids, mask, pos), atol=1e-4)


@pytest.mark.parametrize("tied", [False, True])
def test_bf16_stays_bf16_and_tied_head(tmp_path, tied):
  d = tmp_path / "hf"
  make_qwen3(d, tied=tied, dtype=torch.bfloat16)
  params, cfg = load_params(d)
  assert cfg.param_dtype == "bfloat16" and cfg.tie_word_embeddings == tied
  assert all(x.dtype == ml_dtypes.bfloat16 for x in jax.tree.leaves(params))
  assert ("lm_head" in params) != tied
  convert_hf_to_model_dir(d, tmp_path / "m")
  restored, _ = load_params(tmp_path / "m")
  assert all(x.dtype == jax.numpy.bfloat16 for x in jax.tree.leaves(restored))
  out = export_model_dir_to_hf(tmp_path / "m", tmp_path / "out")
  assert_same_tensors(all_tensors(d), all_tensors(out))
  # the export casts only when asked
  out32 = export_model_dir_to_hf(tmp_path / "m", tmp_path / "out32", dtype="float32")
  assert all(v.dtype == np.float32 for v in all_tensors(out32).values())


def test_bad_inputs(tmp_path):
  with pytest.raises(ConversionError, match="config.json"):
    load_hf_params(tmp_path)
  d = tmp_path / "hf"
  make_qwen3(d)
  good = all_tensors(d)
  cfg = json.loads((d / "config.json").read_text())

  (d / "config.json").write_text(json.dumps(dict(cfg, model_type="llama")))
  with pytest.raises(ConversionError, match="unsupported model_type 'llama'"):
    load_hf_params(d)
  (d / "config.json").write_text(json.dumps(cfg))

  missing = dict(good)
  missing.pop("model.layers.1.mlp.up_proj.weight")
  save_file(missing, str(d / "model.safetensors"))
  with pytest.raises(ConversionError, match="model.layers.1.mlp.up_proj.weight.*missing"):
    load_hf_params(d)
  bad = dict(good)
  bad["model.norm.weight"] = np.ones(65, np.float32)
  save_file(bad, str(d / "model.safetensors"))
  with pytest.raises(ConversionError, match=r"model.safetensors: tensor 'model.norm.weight' has shape \(65,\)"):
    load_hf_params(d)
  os.remove(d / "model.safetensors")
  with pytest.raises(ConversionError, match="no weights"):
    load_hf_params(d)


def test_export_refuses_non_empty_dir_and_leaves_nothing(tmp_path):
  d = tmp_path / "hf"
  make_qwen3(d)
  convert_hf_to_model_dir(d, tmp_path / "m")
  with pytest.raises(ConversionError, match="not empty"):
    convert_hf_to_model_dir(d, tmp_path / "m")
  target = tmp_path / "out"
  target.mkdir()
  (target / "keep.txt").write_text("x")
  with pytest.raises(ConversionError, match="out: exists and is not empty"):
    export_model_dir_to_hf(tmp_path / "m", target)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "m", "out"]  # no temp dirs left
  export_model_dir_to_hf(tmp_path / "m", target, overwrite=True)
  assert not (target / "keep.txt").exists() and (target / "model.safetensors.index.json").is_file()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "m", "out"]


def test_non_finite_params_are_never_written_exported_or_decoded(tmp_path):
  """A diverged model (here: one NaN in one layer's MLP) is refused by every model-dir
  write, by export and by the decoding loader, each naming the param."""
  from t3d_jax.convert import load_model
  d = tmp_path / "hf"
  make_qwen3(d)
  params, cfg, _ = load_hf_params(d)
  params["layers"]["mlp"]["up_kernel"][1, 2, 3] = np.nan
  with pytest.raises(ConversionError, match=r"m2: param layers/mlp/up_kernel has 1 NaN/inf"):
    checkpoint.save_model_dir(tmp_path / "m2", params, cfg)
  assert not (tmp_path / "m2").exists()
  convert_hf_to_model_dir(d, tmp_path / "m")
  import shutil
  shutil.rmtree(tmp_path / "m" / checkpoint.PARAMS)
  checkpoint.save_params(tmp_path / "m" / checkpoint.PARAMS, params)  # a corrupt model dir
  with pytest.raises(ConversionError, match=r"out: param layers/mlp/up_kernel has 1 NaN"):
    export_model_dir_to_hf(tmp_path / "m", tmp_path / "out")
  assert not (tmp_path / "out").exists()
  with pytest.raises(ConversionError, match=r"m: param layers/mlp/up_kernel has 1 NaN"):
    load_model(tmp_path / "m")


def _cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  return subprocess.run([sys.executable, "-m", "t3d_jax.main", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def test_cli_convert_then_export(tmp_path):
  d = tmp_path / "hf"
  model = make_qwen3(d, tied=True)
  r = _cli("--config", "configs/convert.py", f"--config.hf_dir={d}",
           f"--config.workdir={tmp_path / 'w'}")
  assert r.returncode == 0, r.stderr[-3000:]
  assert checkpoint.is_model_dir(tmp_path / "w" / "model")
  r = _cli("--config", "configs/export.py", f"--config.workdir={tmp_path / 'w'}",
           "--config.export_dtype=bfloat16")
  assert r.returncode == 0, r.stderr[-3000:]
  out = tmp_path / "w" / "hf_export"
  t = all_tensors(out)
  assert all(v.dtype == ml_dtypes.bfloat16 for v in t.values()) and "lm_head.weight" not in t
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  ids = np.arange(1, 9)[None]
  pos = np.arange(8)[None]
  mask = np.ones((1, 8, 8), bool)
  np.testing.assert_allclose(torch_logits(reloaded, ids, mask, pos),
                             torch_logits(model, ids, mask, pos), atol=0.1)
  # bad input through the CLI: one clear line, non-zero exit, no traceback
  r = _cli("--config", "configs/convert.py", f"--config.hf_dir={tmp_path / 'nope'}",
           f"--config.workdir={tmp_path / 'w2'}")
  assert r.returncode != 0 and "nope/config.json: missing config.json" in r.stderr
  assert "Traceback" not in r.stderr
  r = _cli("--config", "configs/export.py", f"--config.workdir={tmp_path / 'w'}")
  assert r.returncode != 0 and "hf_export: exists and is not empty" in r.stderr
