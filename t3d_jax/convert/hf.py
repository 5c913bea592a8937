"""Hugging Face checkpoint directories <-> param trees, one tensor at a time.

Reading opens each safetensors shard lazily and materialises one tensor at a time in its
stored dtype (bf16 stays bf16); the per-layer tensors are written into one preallocated
stacked array, so peak memory is the params plus one tensor. Writing plans the shards
from shapes, writes them into a temp dir next to the target and renames it into place.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from t3d_jax import dtypes
from t3d_jax.checkpoint import (INDEX_FILE, ConversionError, check_finite, check_target,
                                copy_meta_files)
from t3d_jax.dtypes import as_dtype
from t3d_jax.errors import InputError
from t3d_jax.fileio import atomic_dir
from t3d_jax.models import family as families
from t3d_jax.models.sdar import SDARConfig

SINGLE_FILE = "model.safetensors"
_SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


def dtype_name(dtype) -> str:
  try:
    return dtypes.dtype_name(dtype)
  except ValueError as e:
    raise ConversionError(str(e)) from None


def read_json_object(path: Path) -> dict[str, Any]:
  """A JSON file holding one object; anything else (not UTF-8, malformed, a number of
  more digits than Python converts, nesting deeper than the parser recurses, a list) is
  a ConversionError naming the file."""
  try:
    obj = json.loads(path.read_bytes())
  except (ValueError, RecursionError) as e:
    raise ConversionError(f"{path}: invalid JSON ({type(e).__name__}: {e})") from None
  if not isinstance(obj, dict):
    raise ConversionError(f"{path}: invalid JSON (an object expected, got "
                          f"{type(obj).__name__})")
  return obj


def read_hf_config(hf_dir) -> dict[str, Any]:
  path = Path(hf_dir) / "config.json"
  if not path.is_file():
    raise ConversionError(f"{path}: missing config.json (is {hf_dir} a Hugging Face model dir?)")
  hf = read_json_object(path)
  try:
    families.for_model_type(hf.get("model_type"), str(path))
  except InputError as e:
    raise ConversionError(str(e)) from None
  return hf


def config_from_hf(hf: dict[str, Any], *, where: str = "config.json", **overrides):
  """The model config of a transformers config.json dict, by its family (model_type);
  a missing key or an option the family does not implement is a ConversionError naming
  ``where`` and the key."""
  fam = families.for_model_type(hf.get("model_type"), where)
  try:
    return fam.config_from_hf(hf, **overrides)
  except KeyError as e:
    raise ConversionError(f"{where}: key {e.args[0]!r} missing (a {fam.name} config "
                          "needs it)") from None
  except (TypeError, ValueError) as e:
    raise ConversionError(f"{where}: {e}") from None


def hf_config_from(cfg) -> dict[str, Any]:
  """A config.json of ``cfg``'s family for params that came without one."""
  return families.of_config(cfg).hf_config_from(cfg)


def entries(cfg):
  """(hf name, row, layer or None) per tensor of ``cfg`` (its family's table)."""
  return families.of_config(cfg).tensors(cfg)


@contextlib.contextmanager
def _safe_open(path: Path, name: str | None = None):
  """``safe_open`` whose failures (a truncated or corrupt shard) name the file and tensor."""
  try:
    with safe_open(path, "np") as f:
      yield f
  except SafetensorError as e:
    what = f", tensor {name!r}" if name else ""
    raise ConversionError(f"{path}{what}: unreadable safetensors ({' '.join(str(e).split())});"
                          " the file is truncated or corrupt: copy or download it again") from None


class TensorSource:
  """Lazy access to the tensors of a (sharded) safetensors checkpoint."""

  def __init__(self, hf_dir):
    self.dir = Path(hf_dir)
    index, single = self.dir / INDEX_FILE, self.dir / SINGLE_FILE
    if index.is_file():
      self.weight_map = read_json_object(index).get("weight_map")
      if not (isinstance(self.weight_map, dict) and self.weight_map and all(
          isinstance(f, str) and f.endswith(".safetensors") and Path(f).name == f
          for f in self.weight_map.values())):
        raise ConversionError(f"{index}: not a safetensors index (its 'weight_map' must map "
                              "tensor names to .safetensors file names in this dir)")
    elif single.is_file():
      with _safe_open(single) as f:
        self.weight_map = {k: SINGLE_FILE for k in f.keys()}
    else:
      raise ConversionError(f"{self.dir}: no weights ({SINGLE_FILE} or {INDEX_FILE}) found")
    for fname in sorted(set(self.weight_map.values())):
      if not (self.dir / fname).is_file():
        raise ConversionError(f"{self.dir / fname}: weight shard listed in the index is missing")

  def check_layers(self, cfg) -> None:
    """A layer count the checkpoint cannot hold (every layer is several tensors) is
    refused before the config's tensor list is made (10**12 layers would never finish)."""
    if cfg.num_layers > len(self.weight_map):
      raise ConversionError(f"{self.dir}: config.json says {cfg.num_layers} layers, but the "
                            f"checkpoint holds only {len(self.weight_map)} tensors")

  def __contains__(self, name: str) -> bool:
    return name in self.weight_map

  # A handle per read: a long-lived handle keeps every touched page of the memory-mapped
  # shard resident, which would count the whole checkpoint a second time in RSS.
  def shape(self, name: str) -> tuple[int, ...]:
    with _safe_open(self.file_of(name), name) as f:
      return tuple(f.get_slice(name).get_shape())

  def dtype_name(self, name: str) -> str:
    with _safe_open(self.file_of(name), name) as f:
      stored = f.get_slice(name).get_dtype()
    if stored not in _SAFETENSORS_DTYPES:
      raise ConversionError(f"{self.file_of(name)}: tensor {name!r} has unsupported dtype "
                            f"{stored}")
    return _SAFETENSORS_DTYPES[stored]

  def get(self, name: str) -> np.ndarray:
    with _safe_open(self.file_of(name), name) as f:
      return f.get_tensor(name)

  def file_of(self, name: str) -> Path:
    if name not in self.weight_map:
      raise ConversionError(f"{self.dir}: tensor {name!r} is missing from the checkpoint")
    return self.dir / self.weight_map[name]


def set_path(tree: dict, path: tuple[str, ...], value) -> None:
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def get_path(tree, path: tuple[str, ...]):
  for p in path:
    tree = tree[p]
  return tree


def read_hf_model_config(hf_dir, param_dtype: str | None = None) -> SDARConfig:
  """The SDARConfig of an HF dir: its config.json, and the stored (or the requested)
  param dtype, without reading any tensor."""
  cfg = config_from_hf(read_hf_config(hf_dir), where=str(Path(hf_dir) / "config.json"))
  if param_dtype:
    return cfg.replace(param_dtype=param_dtype)
  src = TensorSource(hf_dir)
  src.check_layers(cfg)
  return cfg.replace(param_dtype=src.dtype_name(entries(cfg)[0][0]))


def iter_hf_params(hf_dir, cfg: SDARConfig, cast: str | None = None):
  """Yields (param path, numpy array) one param at a time (the per-layer tensors of a
  param stacked into one array), checking every tensor's presence and shape; ``cast``
  converts to that dtype, else tensors keep their stored dtype. Peak host memory is one
  stacked param; the caller decides where each goes (host tree or device shards)."""
  src = TensorSource(hf_dir)
  src.check_layers(cfg)
  cast = None if not cast else as_dtype(cast)
  used, stack, current = set(), None, None
  for name, row, layer in entries(cfg):
    if name not in src:
      hint = (" (config.json says the head is untied; set tie_word_embeddings / "
              "weight_tying true if it is tied)" if row.path == ("lm_head",) else "")
      raise ConversionError(f"{hf_dir}: tensor {name!r} is missing from the checkpoint{hint}")
    want = row.hf_shape(cfg)
    if src.shape(name) != want:
      raise ConversionError(f"{src.file_of(name)}: tensor {name!r} has shape {src.shape(name)}, "
                            f"config.json implies {want}")
    arr = src.get(name)
    if arr.dtype.name not in _SAFETENSORS_DTYPES.values():  # an int tensor is no weight
      raise ConversionError(f"{src.file_of(name)}: tensor {name!r} has dtype {arr.dtype}, "
                            f"expected one of {', '.join(_SAFETENSORS_DTYPES.values())}")
    arr = row.to_param(arr, cfg)
    if cast is not None and arr.dtype != cast:
      arr = arr.astype(cast)
    used.add(name)
    if layer is None:
      yield row.path, arr
      continue
    if layer == 0:
      stack, current = np.empty((cfg.num_layers,) + arr.shape, arr.dtype), row.path
    stack[layer] = arr
    del arr
    if layer == cfg.num_layers - 1:
      yield current, stack
      stack = None
  extra = sorted(set(src.weight_map) - used)
  if cfg.tie_word_embeddings:  # a tied head saved anyway: the embedding is the head
    head = [n for n, row, _ in entries(cfg.replace(tie_word_embeddings=False))
            if row.path == ("lm_head",)]
    extra = [n for n in extra if n not in head]
  if extra:
    logging.warning("%s: ignoring %d tensors not in the %s mapping: %s", hf_dir, len(extra),
                    families.of_config(cfg).name, extra[:5])


def load_hf_params(hf_dir, param_dtype: str | None = None) -> tuple[dict, SDARConfig, dict]:
  """Read an HF dir into (params of numpy arrays, SDARConfig, config.json dict).

  Tensors keep their stored dtype unless ``param_dtype`` is given explicitly."""
  hf = read_hf_config(hf_dir)
  cfg = config_from_hf(hf, where=str(Path(hf_dir) / "config.json"))
  params: dict = {}
  for path, arr in iter_hf_params(hf_dir, cfg, param_dtype):
    set_path(params, path, arr)
  cfg = cfg.replace(param_dtype=dtype_name(params["embedding"].dtype))
  return params, cfg, hf


def save_hf_params(params, cfg: SDARConfig, out_dir, meta_dir=None, *,
                   max_shard_bytes: int = 2 * 1024**3, overwrite: bool = False,
                   dtype: str | None = None) -> Path:
  """Write params as an HF dir: sharded safetensors (metadata format=pt) + index.

  ``meta_dir`` (the original HF dir, or a converted workdir's copy of it) provides
  config.json (kept verbatim: model_type, auto_map, torch_dtype), tokenizer and
  remote-code files; without it a Qwen3 config.json is generated. ``dtype`` casts on
  the way out (default: keep the param dtype)."""
  out_dir = Path(out_dir)
  check_finite(params, out_dir)
  cast = as_dtype(dtype) if dtype else None
  plan: list[list[tuple[str, Any, Any]]] = [[]]
  size = 0
  for name, row, layer in families.of_config(cfg).tensors_hf_order(cfg):
    leaf = get_path(params, row.path)
    itemsize = (cast or np.dtype(leaf.dtype)).itemsize
    nbytes = int(np.prod(row.hf_shape(cfg))) * itemsize
    if plan[-1] and size + nbytes > max_shard_bytes:
      plan.append([])
      size = 0
    plan[-1].append((name, row, layer))
    size += nbytes
  check_target(out_dir, overwrite)
  with atomic_dir(out_dir) as tmp:
    weight_map, total = {}, 0
    n = len(plan)
    for k, shard in enumerate(plan):
      fname = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
      tensors = {}
      for name, row, layer in shard:
        leaf = get_path(params, row.path)
        arr = np.asarray(leaf if layer is None else leaf[layer])
        arr = row.to_hf(arr, cfg)
        if cast is not None:
          arr = arr.astype(cast)
        tensors[name] = np.ascontiguousarray(arr)
        weight_map[name] = fname
        total += arr.nbytes
      save_file(tensors, str(tmp / fname), metadata={"format": "pt"})
      del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    if meta_dir is not None and (Path(meta_dir) / "config.json").is_file():
      copy_meta_files(meta_dir, tmp)
    else:
      (tmp / "config.json").write_text(json.dumps(hf_config_from(cfg), indent=2) + "\n")
  return out_dir
