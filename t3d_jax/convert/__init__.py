"""Weights in and out: HF dir <-> params <-> orbax model dir."""
from __future__ import annotations

from pathlib import Path

from t3d_jax import checkpoint
from t3d_jax.convert.hf import (ConversionError, load_hf_params, read_hf_config,
                                save_hf_params)
from t3d_jax.models.sdar import SDARConfig


def load_params(path, param_dtype: str | None = None, abstract=None):
  """Load (params, SDARConfig) from an HF dir (config.json + safetensors) or from an
  orbax model dir written by ``convert`` (a workdir holding one is accepted too).

  HF tensors keep their stored dtype unless ``param_dtype`` is given."""
  p = Path(path)
  if (p / "config.json").is_file():
    params, cfg, _ = load_hf_params(p, param_dtype)
    return params, cfg
  for cand in (p, p / "model"):
    if checkpoint.is_model_dir(cand):
      cfg = checkpoint.load_model_config(cand)
      params = checkpoint.restore_params(cand / checkpoint.PARAMS, abstract)
      if param_dtype and param_dtype != cfg.param_dtype:
        import jax
        from t3d_jax.models.sdar import as_dtype
        params = jax.tree.map(lambda x: x.astype(as_dtype(param_dtype)), params)
        cfg = cfg.replace(param_dtype=param_dtype)
      return params, cfg
  raise ConversionError(f"{p}: neither a Hugging Face dir (config.json) nor a t3d_jax model dir "
                        f"({checkpoint.CONFIG} + {checkpoint.PARAMS}/)")


def convert_hf_to_model_dir(hf_dir, model_dir, param_dtype: str | None = None,
                            overwrite: bool = False,
                            this_process_only: bool = False) -> SDARConfig:
  """HF checkpoint dir -> orbax model dir (params + config + copied HF meta files);
  ``this_process_only``: the one writer of a multi-process run (see save_params)."""
  params, cfg, _ = load_hf_params(hf_dir, param_dtype)
  checkpoint.save_model_dir(model_dir, params, cfg, meta_dir=hf_dir, overwrite=overwrite,
                            this_process_only=this_process_only)
  return cfg


def export_model_dir_to_hf(model_dir, out_dir, *, max_shard_bytes=2 * 1024**3,
                           overwrite=False, dtype=None, params=None) -> Path:
  """Orbax model dir (or ``params`` trained from it) -> HF dir transformers can load."""
  model_dir = Path(model_dir)
  if params is None:
    params, cfg = load_params(model_dir)
  else:
    cfg = checkpoint.load_model_config(model_dir)
  meta = model_dir / checkpoint.HF_META
  return save_hf_params(params, cfg, out_dir, meta if (meta / "config.json").is_file() else None,
                        max_shard_bytes=max_shard_bytes, overwrite=overwrite, dtype=dtype)


__all__ = ["ConversionError", "SDARConfig", "convert_hf_to_model_dir", "export_model_dir_to_hf",
           "load_hf_params", "load_params", "read_hf_config", "save_hf_params"]
