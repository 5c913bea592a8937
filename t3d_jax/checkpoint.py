"""Orbax checkpoints of param trees (converted HF weights, exported students).

A *model dir* is what ``convert`` writes and every later mode reads:

  <model_dir>/params/            orbax StandardCheckpointer tree (dtype as stored)
  <model_dir>/sdar_config.json   the architecture (SDARConfig fields)
  <model_dir>/hf_meta/           original config.json, tokenizer, remote-code files
  <model_dir>/params.sha256      digest of the param values (:func:`model_digest`)

Writes go to a temp dir that is renamed into place, so a crash leaves no half model dir.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from t3d_jax.errors import InputError
from t3d_jax.fileio import atomic_dir
from t3d_jax.models.family import config_from_json, config_to_json
from t3d_jax.models.sdar import SDARConfig

PARAMS, CONFIG, HF_META, DIGEST = "params", "sdar_config.json", "hf_meta", "params.sha256"
INDEX_FILE = "model.safetensors.index.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5")


class CheckpointWriteError(InputError):
  """A checkpoint (or model dir) could not be written: disk full, read-only, ..."""


class ConversionError(InputError):
  """A problem with a checkpoint directory; the message names the file and key."""


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


def check_target(out_dir, overwrite: bool) -> None:
  """Refuse to replace a non-empty ``out_dir`` unless ``overwrite``."""
  out_dir = Path(out_dir)
  if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
    raise ConversionError(f"{out_dir}: exists and is not empty; pass overwrite=True "
                          "(--config.overwrite=True) to replace it")


@contextlib.contextmanager
def writing(where):
  """A failed (possibly background) orbax write under ``where`` becomes one
  CheckpointWriteError naming it and orbax's first line."""
  try:
    yield
  except Exception as e:  # noqa: BLE001 -- orbax raises ValueError, OSError, RuntimeError
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise CheckpointWriteError(f"{where}: could not be written ({first}); is the disk full "
                               "or read-only?") from None


def save_params(directory, params, *, this_process_only: bool = False) -> None:
  """Save a param tree (numpy or jax arrays) with orbax; blocks until written.

  orbax syncs every process at a save; ``this_process_only`` (host numpy params written
  by one process of a multi-process run, e.g. process 0's student) limits it to this
  process, so the others are not waited for."""
  kw = {}
  if this_process_only and jax.process_count() > 1:
    me = jax.process_index()
    kw["multiprocessing_options"] = ocp.options.MultiprocessingOptions(
        primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"process_{me}_only")
  ckptr = ocp.StandardCheckpointer(**kw)
  try:
    with writing(directory):
      ckptr.save(Path(directory).absolute(), params)
      ckptr.wait_until_finished()
  finally:
    with contextlib.suppress(Exception):
      ckptr.close()


def _to_jax(x):
  return jax.numpy.asarray(x) if isinstance(x, np.ndarray) else x


def restore_params(directory, abstract=None):
  """Restore a param tree; ``abstract`` (ShapeDtypeStructs, optionally with shardings)
  places the arrays directly where they belong."""
  ckptr = ocp.StandardCheckpointer()
  try:
    return ckptr.restore(Path(directory).absolute(), abstract)
  finally:
    ckptr.close()


def is_model_dir(path) -> bool:
  p = Path(path)
  return (p / CONFIG).is_file() and (p / PARAMS).is_dir()


def check_finite(params, where) -> None:
  """ConversionError naming the first param with NaN/inf values (a diverged run's
  weights must not become a model anyone decodes or exports)."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    finite = np.isfinite(np.asarray(leaf).astype(np.float32, copy=False))  # bf16 too
    if not finite.all():
      name = "/".join(str(getattr(k, "key", k)) for k in path)
      bad = int(finite.size - finite.sum())
      raise ConversionError(f"{where}: param {name} has {bad} NaN/inf values of {finite.size}; "
                            "refusing to use it (did the training run diverge?)")


def params_digest(params) -> str:
  """sha256 of a host param tree: every leaf's path, dtype, shape and bytes."""
  h = hashlib.sha256()
  for path, leaf in sorted((jax.tree_util.keystr(p), x) for p, x in
                           jax.tree_util.tree_flatten_with_path(params)[0]):
    a = np.ascontiguousarray(leaf)
    h.update(f"{path}:{a.dtype}:{a.shape};".encode())
    h.update(a.reshape(-1).view(np.uint8))  # bf16 too
  return h.hexdigest()


def _files_digest(files, root: Path) -> str:
  h = hashlib.sha256()
  for f in files:
    h.update(f"{f.relative_to(root)}:{f.stat().st_size};".encode())
    with open(f, "rb") as fh:
      for chunk in iter(lambda: fh.read(1 << 24), b""):
        h.update(chunk)
  return h.hexdigest()


def model_digest(path) -> str:
  """Identity of the weights at ``path`` (a model dir, a workdir holding one, or an HF
  dir): the digest :func:`save_model_dir` wrote, else a digest of the weight files'
  contents (16 hex digits). What a resumed run / reused result must share with the one
  before."""
  p = Path(path)
  for cand in (p, p / "model"):
    if (cand / DIGEST).is_file():
      return (cand / DIGEST).read_text().strip()[:16]
    if is_model_dir(cand):
      files = sorted(f for f in (cand / PARAMS).rglob("*") if f.is_file())
      return _files_digest(files, cand)[:16]
  files = sorted(f for f in p.iterdir() if f.is_file() and _is_weight_file(f.name))
  return _files_digest(files, p)[:16]


def save_model_dir(model_dir, params, cfg: SDARConfig, meta_dir=None, overwrite=False, *,
                   this_process_only: bool = False) -> Path:
  model_dir = Path(model_dir).absolute()
  check_finite(params, model_dir)
  check_target(model_dir, overwrite)
  with atomic_dir(model_dir) as tmp:
    save_params(tmp / PARAMS, params, this_process_only=this_process_only)
    (tmp / DIGEST).write_text(params_digest(params) + "\n")
    arch = config_to_json(cfg)
    arch.pop("attention")  # a choice of the run that loads it, not of the weights
    (tmp / CONFIG).write_text(json.dumps(arch, indent=2) + "\n")
    (tmp / HF_META).mkdir()
    if meta_dir is not None:
      copy_meta_files(meta_dir, tmp / HF_META)
  return model_dir


def meta_dir_of(path) -> Path:
  """Where the HF config.json / tokenizer of a model live: the HF dir itself, a model
  dir's hf_meta/, or the hf_meta/ of a workdir's model/."""
  p = Path(path)
  for cand in (p, p / HF_META, p / "model" / HF_META):
    if (cand / "config.json").is_file():
      return cand
  return p / HF_META


def load_model_config(model_dir) -> SDARConfig:
  return config_from_json(json.loads((Path(model_dir) / CONFIG).read_text()))


class TrainCheckpointer:
  """Orbax CheckpointManager for a training run: student state (params, opt_state,
  step), the frozen reference (unless ``with_reference=False``: then pass None for it),
  and a JSON ``meta`` (data position, round, fingerprint). Keeps the newest ``keep``
  checkpoints; saves asynchronously when ``async_save``."""

  def __init__(self, directory, *, keep: int = 3, async_save: bool = True,
               with_reference: bool = True):
    opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                        enable_async_checkpointing=async_save,
                                        cleanup_tmp_directories=True)  # a killed save's
    self.directory = Path(directory).absolute()
    self.items = ("state", "reference", "meta") if with_reference else ("state", "meta")
    self.manager = ocp.CheckpointManager(self.directory, options=opts, item_names=self.items)

  @staticmethod
  def _state_tree(state):
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state}

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step: int, state, reference, meta: dict) -> None:
    args = dict(state=ocp.args.StandardSave(self._state_tree(state)),
                meta=ocp.args.JsonSave(meta))
    if "reference" in self.items:
      args["reference"] = ocp.args.StandardSave(reference)
    with writing(self.directory):
      self.manager.save(step, args=ocp.args.Composite(**args), force=True)

  def check(self) -> None:
    """Raises CheckpointWriteError at once if a background save failed (cheap: no wait)."""
    with writing(self.directory):
      self.manager.check_for_errors()

  def wait(self) -> None:
    """Blocks until the saves in flight are on disk."""
    with writing(self.directory):
      self.manager.wait_until_finished()

  def latest_meta(self):
    """The JSON meta of the newest checkpoint (no array is read); None when there is none."""
    step = self.manager.latest_step()
    if step is None:
      return None
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore_latest(self, state, reference):
    """(state, reference, meta) of the newest checkpoint, restored into the structure,
    dtypes and shardings of the given ones; None when there is none."""
    step = self.manager.latest_step()
    if step is None:
      return None
    abstract = lambda t: jax.tree.map(ocp.utils.to_shape_dtype_struct, t)  # noqa: E731
    args = dict(state=ocp.args.StandardRestore(abstract(self._state_tree(state))),
                meta=ocp.args.JsonRestore())
    if "reference" in self.items:
      args["reference"] = ocp.args.StandardRestore(abstract(reference))
    out = self.manager.restore(step, args=ocp.args.Composite(**args))
    s = out["state"]
    return (state.replace(step=s["step"], params=s["params"], opt_state=s["opt_state"]),
            out["reference"] if "reference" in self.items else None, out["meta"])

  def close(self, *, failed: bool = False) -> None:
    """Waits for the saves in flight and closes; ``failed``: the run is failing anyway,
    so a write error here is not raised over the error in flight."""
    try:
      self.wait()
    except CheckpointWriteError:
      if not failed:
        raise
    finally:
      with contextlib.suppress(Exception):
        self.manager.close()
