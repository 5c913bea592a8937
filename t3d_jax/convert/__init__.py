"""Weights in and out: HF dir <-> params <-> orbax model dir, on the host or sharded."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np

from t3d_jax import checkpoint, sharding
from t3d_jax.checkpoint import ConversionError
from t3d_jax.convert.hf import (config_from_hf, get_path, hf_config_from, iter_hf_params,
                                load_hf_params, read_hf_config, read_hf_model_config,
                                save_hf_params, set_path)
from t3d_jax.dtypes import as_dtype
from t3d_jax.errors import InputError
from t3d_jax.models.numerics import Numerics
from t3d_jax.models.family import of_config
from t3d_jax.models.sdar import SDARConfig


def _model_dir_of(p: Path):
  for cand in (p, p / "model"):
    if checkpoint.is_model_dir(cand):
      return cand
  return None


def _not_a_model(p: Path) -> ConversionError:
  return ConversionError(f"{p}: neither a Hugging Face dir (config.json) nor a t3d_jax model "
                         f"dir ({checkpoint.CONFIG} + {checkpoint.PARAMS}/)")


def load_params(path, param_dtype: str | None = None, abstract=None):
  """Load (params, SDARConfig) onto this host from an HF dir (config.json + safetensors)
  or from an orbax model dir written by ``convert`` (a workdir holding one is accepted
  too). HF tensors keep their stored dtype unless ``param_dtype`` is given. For a model
  that must not exist on one host, use :func:`load_params_sharded`."""
  p = Path(path)
  if (p / "config.json").is_file():
    params, cfg, _ = load_hf_params(p, param_dtype)
    return params, cfg
  cand = _model_dir_of(p)
  if cand is None:
    raise _not_a_model(p)
  cfg = checkpoint.load_model_config(cand)
  params = checkpoint.restore_params(cand / checkpoint.PARAMS, abstract)
  if param_dtype and param_dtype != cfg.param_dtype:
    params = jax.tree.map(lambda x: x.astype(as_dtype(param_dtype)), params)
    cfg = cfg.replace(param_dtype=param_dtype)
  return params, cfg


def model_config(path, param_dtype: str | None = None) -> SDARConfig:
  """The SDARConfig of an HF dir or model dir, without reading any weight."""
  p = Path(path)
  if (p / "config.json").is_file():
    return read_hf_model_config(p, param_dtype)
  cand = _model_dir_of(p)
  if cand is None:
    raise _not_a_model(p)
  cfg = checkpoint.load_model_config(cand)
  return cfg.replace(param_dtype=param_dtype) if param_dtype else cfg


def load_params_sharded(path, mesh, rules, param_dtype: str | None = None):
  """(params, SDARConfig) straight into their shardings (``rules`` on ``mesh``): an HF
  dir is read one (stacked) param at a time and each device gets only its slice; an
  orbax model dir is restored into the target shardings (each process reads the slices
  its devices hold). No host ever holds the whole model."""
  p = Path(path)
  cfg = model_config(p, param_dtype)
  shardings = sharding.param_shardings(cfg, mesh, rules)
  if (p / "config.json").is_file():
    params: dict = {}
    for leaf_path, host in iter_hf_params(p, cfg, cfg.param_dtype):
      set_path(params, leaf_path, sharding.shard_tree(host, get_path(shardings, leaf_path)))
      del host
    return params, cfg
  src = _model_dir_of(p)
  stored = checkpoint.load_model_config(src)
  # restore as stored, then cast on device
  abstract = nn.unbox(of_config(stored).network.abstract_params(stored))
  params = checkpoint.restore_params(src / checkpoint.PARAMS,
                                     sharding.abstract_sharded(abstract, shardings))
  if cfg.param_dtype != stored.param_dtype:
    cast = jax.jit(lambda t: jax.tree.map(lambda x: x.astype(as_dtype(cfg.param_dtype)), t),
                   out_shardings=shardings)
    params = cast(params)
  return params, cfg


@dataclasses.dataclass
class Model:
  """A model ready to decode: params, config, tokenizer and its special ids."""
  name: str
  path: str
  params: object
  cfg: SDARConfig
  tokenizer: object
  ids: object


def load_model(path, name: str = "model", tokenizer_dir: str = "",
               numerics: Numerics | None = None) -> Model:
  """Params, config, tokenizer and special ids of an HF dir or a t3d_jax model dir, for
  decoding with ``numerics`` (config.model: its param_dtype casts the weights, its dtype
  and attention kernel apply; None or "" fields keep the model's)."""
  from t3d_jax.data import tokenizer as tok_lib
  p = Path(path)
  if not p.exists():
    raise InputError(f"model {name!r}: {p} does not exist (a model dir from the convert or "
                     f"distill mode, or an HF dir)")
  numerics = numerics or Numerics("", "", "", "")
  params, cfg = load_params(p, param_dtype=numerics.param_dtype or None)
  checkpoint.check_finite(params, p)
  cfg = numerics.apply(cfg, train=False)
  tokenizer = tok_lib.load_tokenizer(tokenizer_dir or checkpoint.meta_dir_of(p))
  ids = tok_lib.special_ids(tokenizer, model_mask_id=cfg.mask_token_id)
  if ids.vocab_size > cfg.vocab_size:
    raise InputError(f"model {name!r} ({p}): tokenizer has {ids.vocab_size} tokens but the "
                     f"model's vocabulary is {cfg.vocab_size}")
  return Model(name, os.fspath(p), params, cfg, tokenizer, ids)


def convert_hf_to_model_dir(hf_dir, model_dir, param_dtype: str | None = None,
                            overwrite: bool = False,
                            this_process_only: bool = False) -> SDARConfig:
  """HF checkpoint dir -> orbax model dir (params + config + copied HF meta files);
  ``this_process_only``: the one writer of a multi-process run (see save_params)."""
  params, cfg, _ = load_hf_params(hf_dir, param_dtype)
  checkpoint.check_finite(params, hf_dir)  # name the checkpoint, not the dir not written
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


def count_params(tree) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


__all__ = ["ConversionError", "Model", "SDARConfig", "config_from_hf", "convert_hf_to_model_dir",
           "export_model_dir_to_hf", "hf_config_from", "load_hf_params", "load_model",
           "load_params", "load_params_sharded", "model_config", "read_hf_config",
           "save_hf_params"]
