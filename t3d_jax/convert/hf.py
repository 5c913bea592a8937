"""Hugging Face checkpoint directories <-> param trees, one tensor at a time.

Reading opens each safetensors shard lazily and materialises one tensor at a time in its
stored dtype (bf16 stays bf16); the per-layer tensors are written into one preallocated
stacked array, so peak memory is the params plus one tensor. Writing plans the shards
from shapes, writes them into a temp dir next to the target and renames it into place.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging
from safetensors import safe_open
from safetensors.numpy import save_file

from t3d_jax.errors import InputError
from t3d_jax.convert.mapping import entries, hf_order_entries
from t3d_jax.models.sdar import SDARConfig

SUPPORTED_MODEL_TYPES = ("qwen3", "sdar")
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5")
_DTYPE_NAMES = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16"}


class ConversionError(InputError):
  """A problem with a checkpoint directory; the message names the file and key."""


def dtype_name(dtype) -> str:
  dtype = np.dtype(dtype)
  if dtype.name == "bfloat16":
    return "bfloat16"
  if dtype not in _DTYPE_NAMES:
    raise ConversionError(f"unsupported param dtype {dtype}")
  return _DTYPE_NAMES[dtype]


def read_hf_config(hf_dir) -> dict[str, Any]:
  path = Path(hf_dir) / "config.json"
  if not path.is_file():
    raise ConversionError(f"{path}: missing config.json (is {hf_dir} a Hugging Face model dir?)")
  try:
    hf = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ConversionError(f"{path}: invalid JSON ({e})") from None
  if hf.get("model_type") not in SUPPORTED_MODEL_TYPES:
    raise ConversionError(f"{path}: unsupported model_type {hf.get('model_type')!r}; "
                          f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
  return hf


class TensorSource:
  """Lazy access to the tensors of a (sharded) safetensors checkpoint."""

  def __init__(self, hf_dir):
    self.dir = Path(hf_dir)
    index, single = self.dir / INDEX_FILE, self.dir / SINGLE_FILE
    if index.is_file():
      try:
        self.weight_map = dict(json.loads(index.read_text())["weight_map"])
      except (json.JSONDecodeError, KeyError) as e:
        raise ConversionError(f"{index}: not a safetensors index ({e!r})") from None
    elif single.is_file():
      with safe_open(single, "np") as f:
        self.weight_map = {k: SINGLE_FILE for k in f.keys()}
    else:
      raise ConversionError(f"{self.dir}: no weights ({SINGLE_FILE} or {INDEX_FILE}) found")
    for fname in sorted(set(self.weight_map.values())):
      if not (self.dir / fname).is_file():
        raise ConversionError(f"{self.dir / fname}: weight shard listed in the index is missing")

  def __contains__(self, name: str) -> bool:
    return name in self.weight_map

  # A handle per read: a long-lived handle keeps every touched page of the memory-mapped
  # shard resident, which would count the whole checkpoint a second time in RSS.
  def shape(self, name: str) -> tuple[int, ...]:
    with safe_open(self.file_of(name), "np") as f:
      return tuple(f.get_slice(name).get_shape())

  def get(self, name: str) -> np.ndarray:
    with safe_open(self.file_of(name), "np") as f:
      return f.get_tensor(name)

  def file_of(self, name: str) -> Path:
    return self.dir / self.weight_map[name]


def _set_path(tree: dict, path: tuple[str, ...], value) -> None:
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def get_path(tree, path: tuple[str, ...]):
  for p in path:
    tree = tree[p]
  return tree


def load_hf_params(hf_dir, param_dtype: str | None = None) -> tuple[dict, SDARConfig, dict]:
  """Read an HF dir into (params of numpy arrays, SDARConfig, config.json dict).

  Tensors keep their stored dtype unless ``param_dtype`` is given explicitly."""
  hf = read_hf_config(hf_dir)
  cfg = SDARConfig.from_hf(hf)
  src = TensorSource(hf_dir)
  cast = None if not param_dtype else np.dtype(_np_dtype(param_dtype))
  params: dict = {}
  used = set()
  for name, row, layer in entries(cfg):
    if name not in src:
      hint = (" (config.json says tie_word_embeddings=false; set it true if the head is tied)"
              if name == "lm_head.weight" else "")
      raise ConversionError(f"{hf_dir}: tensor {name!r} is missing from the checkpoint{hint}")
    want = row.hf_shape(cfg)
    if src.shape(name) != want:
      raise ConversionError(f"{src.file_of(name)}: tensor {name!r} has shape {src.shape(name)}, "
                            f"config.json implies {want}")
    arr = row.to_param(src.get(name), cfg)
    if cast is not None and arr.dtype != cast:
      arr = arr.astype(cast)
    used.add(name)
    if layer is None:
      _set_path(params, row.path, arr)
    else:
      if layer == 0:
        _set_path(params, row.path, np.empty((cfg.num_layers,) + arr.shape, arr.dtype))
      get_path(params, row.path)[layer] = arr
  extra = sorted(set(src.weight_map) - used)
  if cfg.tie_word_embeddings and "lm_head.weight" in extra:
    extra.remove("lm_head.weight")  # a tied head saved anyway: the embedding is the head
  if extra:
    logging.warning("%s: ignoring %d tensors not in the SDAR mapping: %s", hf_dir, len(extra),
                    extra[:5])
  cfg = cfg.replace(param_dtype=dtype_name(params["embedding"].dtype))
  return params, cfg, hf


def _np_dtype(name: str):
  import ml_dtypes
  return {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}[name]


def hf_config_from(cfg: SDARConfig) -> dict[str, Any]:
  """A Qwen3 config.json for params that came without one (e.g. trained from scratch)."""
  return {
      "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
      "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim, "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.rms_norm_eps,
      "tie_word_embeddings": cfg.tie_word_embeddings, "attention_bias": cfg.attention_bias,
      "hidden_act": "silu", "max_position_embeddings": 32768, "torch_dtype": cfg.param_dtype,
  }


def _is_weight_file(name: str) -> bool:
  return name.endswith(_WEIGHT_SUFFIXES) or name in (INDEX_FILE, "pytorch_model.bin.index.json")


def copy_meta_files(src_dir, dst_dir) -> list[str]:
  """Copy config.json, tokenizer and remote-code files (everything but weights)."""
  copied = []
  for p in sorted(Path(src_dir).iterdir()):
    if p.is_file() and not _is_weight_file(p.name):
      shutil.copy2(p, Path(dst_dir) / p.name)
      copied.append(p.name)
  return copied


def _prepare_target(out_dir: Path, overwrite: bool) -> Path:
  if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
    raise ConversionError(f"{out_dir}: exists and is not empty; pass overwrite=True "
                          "(--config.overwrite=True) to replace it")
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))


def _commit_dir(tmp: Path, out_dir: Path) -> None:
  """Atomically replace out_dir with tmp (old content removed only after the swap)."""
  old = None
  if out_dir.exists():
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    os.replace(out_dir, old)
  os.replace(tmp, out_dir)
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)


def save_hf_params(params, cfg: SDARConfig, out_dir, meta_dir=None, *,
                   max_shard_bytes: int = 2 * 1024**3, overwrite: bool = False,
                   dtype: str | None = None) -> Path:
  """Write params as an HF dir: sharded safetensors (metadata format=pt) + index.

  ``meta_dir`` (the original HF dir, or a converted workdir's copy of it) provides
  config.json (kept verbatim: model_type, auto_map, torch_dtype), tokenizer and
  remote-code files; without it a Qwen3 config.json is generated. ``dtype`` casts on
  the way out (default: keep the param dtype)."""
  out_dir = Path(out_dir)
  cast = np.dtype(_np_dtype(dtype)) if dtype else None
  plan: list[list[tuple[str, Any, Any]]] = [[]]
  size = 0
  for name, row, layer in hf_order_entries(cfg):
    leaf = get_path(params, row.path)
    itemsize = (cast or np.dtype(leaf.dtype)).itemsize
    nbytes = int(np.prod(row.hf_shape(cfg))) * itemsize
    if plan[-1] and size + nbytes > max_shard_bytes:
      plan.append([])
      size = 0
    plan[-1].append((name, row, layer))
    size += nbytes
  tmp = _prepare_target(out_dir, overwrite)
  try:
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
    _commit_dir(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out_dir
