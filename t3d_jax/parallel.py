"""Mesh, logical-axis rules and shardings; sharded init/restore/step; multi-host helpers.

Everything is explicit: the mesh comes from the config (``mesh_from_config``), the rules
map the model's logical axis names (``vocab``, ``embed``, ``heads``, ``kv_heads``,
``head_dim``, ``mlp``, ``norm``, ``layers``) and the activation name ``batch`` onto mesh
axes, and every jitted function gets explicit ``in_shardings``/``out_shardings``.

Mesh axes (outer to inner): ``data`` (pure data parallel), ``fsdp`` (data parallel whose
params/optimiser state are sharded too), ``tensor`` (heads / mlp / vocab split). The batch's
micro-batch axis M is split over ``('data', 'fsdp')``.

The state never exists on one host: its shapes come from ``jax.eval_shape``, its
shardings from the rules, and it is created by a jit whose ``out_shardings`` are those
(``init_train_state``), restored straight into them (``restore_params``), or read from an
HF dir one tensor at a time into them (``load_hf_params_sharded``).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding, PartitionSpec as P

from t3d_jax.errors import InputError

MESH_AXES = ("data", "fsdp", "tensor")
DATA_AXES = ("data", "fsdp")            # the batch's micro-batch axis is split over these
ACTIVATION_NAMES = ("batch",)           # logical activation names the rules may map

# (logical name, mesh axis | tuple of mesh axes | None). FSDP over the embed dimension,
# tensor parallel over heads / mlp / vocab, layers and norms replicated.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
    ("layers", None),
)

AnyMesh = Union[Mesh, AbstractMesh]
Rules = tuple


# ----------------------------------------------------------------------------- mesh

def mesh_shape(shape: Mapping[str, int], n_devices: int) -> tuple[int, ...]:
  """Sizes of (data, fsdp, tensor) with at most one -1 filled in from ``n_devices``."""
  unknown = sorted(set(shape) - set(MESH_AXES))
  if unknown:
    raise InputError(f"mesh: unknown axis {unknown[0]!r}; the axes are {', '.join(MESH_AXES)}")
  sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
  text = " x ".join(f"{a}={s}" for a, s in zip(MESH_AXES, sizes))
  if sizes.count(-1) > 1:
    raise InputError(f"mesh {text}: at most one axis may be -1 (auto-sized)")
  if any(s == 0 or s < -1 for s in sizes):
    raise InputError(f"mesh {text}: sizes must be positive (or -1 for one auto-sized axis)")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if n_devices % known:
      raise InputError(f"mesh {text}: {n_devices} devices are not divisible by the fixed "
                       f"axes' product {known}, so the -1 axis cannot be sized")
    sizes[sizes.index(-1)] = n_devices // known
  elif known != n_devices:
    raise InputError(f"mesh {text}: product {known} does not equal the device count "
                     f"{n_devices}")
  return tuple(sizes)


def make_mesh(shape: Mapping[str, int], devices: Optional[Sequence] = None) -> Mesh:
  """A (data, fsdp, tensor) mesh with Auto axis types (classic GSPMD propagation)."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = mesh_shape(shape, len(devices))
  return jax.make_mesh(sizes, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def make_abstract_mesh(shape: Mapping[str, int], n_devices: int) -> AbstractMesh:
  """The same mesh without devices (for planning memory on a laptop)."""
  return AbstractMesh(mesh_shape(shape, n_devices), MESH_AXES,
                      axis_types=(AxisType.Auto,) * len(MESH_AXES))


def mesh_from_config(config, devices: Optional[Sequence] = None) -> Mesh:
  return make_mesh(dict(config.mesh.shape), devices)


def axis_sizes(mesh: AnyMesh) -> dict[str, int]:
  return dict(zip(mesh.axis_names, mesh.axis_sizes))


# ----------------------------------------------------------------------------- rules

def _axes(target) -> tuple[str, ...]:
  if target is None:
    return ()
  if isinstance(target, str):
    return (target,)
  return tuple(target)


def make_rules(rules, mesh: AnyMesh, logical_names: Sequence[str] = ()) -> Rules:
  """Validate ``rules`` (pairs (logical, mesh axis | axes | None)) against the mesh.

  Logical names must be model param names or ``ACTIVATION_NAMES`` (when
  ``logical_names`` is given); mesh axes must be the mesh's. A name with no rule is
  replicated."""
  out, seen = [], set()
  names = tuple(mesh.axis_names)
  for i, rule in enumerate(rules):
    if len(rule) != 2:
      raise InputError(f"mesh.rules[{i}]={rule!r}: expected a pair (logical name, mesh axis)")
    logical, target = rule[0], rule[1]
    if logical in seen:
      raise InputError(f"mesh.rules: logical axis {logical!r} has two rules")
    known = set(logical_names) | set(ACTIVATION_NAMES)
    if logical_names and logical not in known:
      raise InputError(f"mesh.rules: unknown logical axis {logical!r}; known: "
                       f"{', '.join(sorted(known))}")
    for a in _axes(target):
      if a not in names:
        raise InputError(f"mesh.rules: logical axis {logical!r} -> mesh axis {a!r}, but the "
                         f"mesh has axes {', '.join(names)}")
    seen.add(logical)
    out.append((logical, target if target is None or isinstance(target, str)
                else tuple(target)))
  return tuple(out)


def rules_from_config(config, mesh: AnyMesh, logical_names: Sequence[str] = ()) -> Rules:
  return make_rules(config.mesh.rules, mesh, logical_names)


def logical_to_mesh(spec: P, rules: Rules, mesh: AnyMesh, shape=None, where: str = "") -> P:
  """Map one logical PartitionSpec to mesh axes. A mesh axis shards at most one dim
  (later dims that would reuse it stay replicated); ``shape`` checks divisibility."""
  table, sizes = dict(rules), axis_sizes(mesh)
  used, out = set(), []
  for dim, name in enumerate(spec):
    axes = []
    for n in _axes(name):
      for a in _axes(table.get(n)):
        if a not in used and a not in axes:
          axes.append(a)
    if shape is not None and axes:
      n_shards = math.prod(sizes[a] for a in axes)
      if shape[dim] % n_shards:
        raise InputError(
            f"{where or 'array'}: dim {dim} ({_axes(name)[0]!r}) has size {shape[dim]}, not "
            f"divisible by mesh axes {'x'.join(axes)} = {n_shards}; change mesh.shape or "
            f"mesh.rules")
    used.update(axes)
    out.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
  while out and out[-1] is None:
    out.pop()
  return P(*out)


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def param_specs(abstract_boxed, rules: Rules, mesh: AnyMesh):
  """Mesh PartitionSpecs of a boxed (logically annotated) abstract param tree."""
  def one(path, box):
    return logical_to_mesh(box.names, rules, mesh, box.value.shape,
                           where=f"param {_path_str(path)} {tuple(box.value.shape)}")
  return jax.tree_util.tree_map_with_path(
      one, abstract_boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def logical_names(abstract_boxed) -> tuple[str, ...]:
  boxes = jax.tree.leaves(abstract_boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  return tuple(sorted({n for b in boxes for n in b.names if n is not None}))


def named(mesh: Mesh, specs):
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, P))


def mirror_params(tree, abstract_params, param_tree, other):
  """For a tree that embeds param-shaped subtrees (an optimiser state): each such
  subtree gets ``param_tree``; every other leaf gets ``other``."""
  pdef = jax.tree.structure(abstract_params)
  pshapes = [tuple(x.shape) for x in jax.tree.leaves(abstract_params)]

  def is_params(x):
    if jax.tree.structure(x) != pdef:
      return False
    return [tuple(getattr(l, "shape", ())) for l in jax.tree.leaves(x)] == pshapes
  return jax.tree.map(lambda x: param_tree if is_params(x) else other, tree, is_leaf=is_params)


# ----------------------------------------------------------------------------- state

@dataclasses.dataclass(frozen=True)
class TrainShardings:
  """Every sharding the update step needs (NamedSharding pytrees)."""
  mesh: Mesh
  rules: Rules
  params: Any           # param tree of NamedSharding
  reference: Any        # reference params (a separate, non-donated argument)
  state: Any            # TrainState of NamedSharding
  batch: NamedSharding  # every batch leaf [A, M, ...]: M over DATA_AXES
  replicated: NamedSharding


def abstract_train_state(model_cfg, tx):
  """TrainState of ShapeDtypeStructs (jax.eval_shape; nothing allocated)."""
  from t3d_jax.distill.step import TrainState
  from t3d_jax.models.sdar import abstract_params
  return jax.eval_shape(lambda p: TrainState.create(p, tx), nn.unbox(abstract_params(model_cfg)))


def batch_spec(rules: Rules) -> P:
  axes = _axes(dict(rules).get("batch", DATA_AXES))
  return P(None, None if not axes else axes[0] if len(axes) == 1 else axes)


def param_shardings(model_cfg, mesh: Mesh, rules: Rules):
  from t3d_jax.models.sdar import abstract_params
  return named(mesh, param_specs(abstract_params(model_cfg), rules, mesh))


def train_shardings(model_cfg, tx, mesh: Mesh, rules: Rules) -> TrainShardings:
  """Shardings of params (rules), optimiser state (mirrors params; scalars replicated),
  step (replicated), reference (as params) and batch."""
  from t3d_jax.models.sdar import abstract_params
  boxed = abstract_params(model_cfg)
  rules = make_rules(rules, mesh, logical_names(boxed))
  psh = named(mesh, param_specs(boxed, rules, mesh))
  rep = NamedSharding(mesh, P())
  abstract = abstract_train_state(model_cfg, tx)
  opt = mirror_params(abstract.opt_state, abstract.params, psh, rep)
  state = abstract.replace(step=rep, params=psh, opt_state=opt)
  return TrainShardings(mesh=mesh, rules=rules, params=psh, reference=psh, state=state,
                        batch=NamedSharding(mesh, batch_spec(rules)), replicated=rep)


def init_train_state(model_cfg, tx, sh: TrainShardings, rng):
  """Random params + optimiser state, created directly in their shardings."""
  from t3d_jax.distill.step import TrainState
  from t3d_jax.models.sdar import init_params
  return jax.jit(lambda r: TrainState.create(init_params(model_cfg, r), tx),
                 out_shardings=sh.state.replace(tx=tx))(rng)


def create_train_state(params, tx, sh: TrainShardings):
  """A TrainState around (already sharded) params; the optimiser state is created in its
  shardings. ``params`` is not donated (callers often keep it as the reference)."""
  from t3d_jax.distill.step import TrainState
  return jax.jit(lambda p: TrainState.create(p, tx), in_shardings=(sh.params,),
                 out_shardings=sh.state.replace(tx=tx))(params)


def abstract_sharded(abstract, shardings):
  """ShapeDtypeStructs carrying shardings (targets for orbax restore)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def restore_params(directory, model_cfg, shardings):
  """Restore a param tree (orbax) straight into ``shardings``: each process reads only
  the slices its devices hold."""
  from t3d_jax.checkpoint import restore_params as _restore
  from t3d_jax.models.sdar import abstract_params
  return _restore(directory, abstract_sharded(nn.unbox(abstract_params(model_cfg)), shardings))


def shard_tree(tree, shardings):
  """Place host (numpy) leaves into shardings, one leaf at a time; each device receives
  only its slice (``make_array_from_callback``)."""
  def put(x, s):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])
  return jax.tree.map(put, tree, shardings)


def gather_to_host(tree):
  """Host numpy copies of (possibly multi-process) sharded arrays. With several
  processes this is a collective: every process must call it."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(tree, tiled=True)


def load_hf_params_sharded(hf_dir, model_cfg_overrides: Optional[dict] = None, *, mesh: Mesh,
                           rules: Rules, param_dtype: Optional[str] = None):
  """HF safetensors -> params in their shardings, one (stacked) param at a time: the
  host never holds more than one param's numpy array. Returns (params, SDARConfig)."""
  from t3d_jax.convert.hf import ConversionError, TensorSource, _np_dtype, read_hf_config
  from t3d_jax.convert.mapping import entries
  from t3d_jax.models.sdar import SDARConfig, abstract_params
  cfg = SDARConfig.from_hf(read_hf_config(hf_dir), **(model_cfg_overrides or {}))
  if param_dtype:
    cfg = cfg.replace(param_dtype=param_dtype)
  boxed = abstract_params(cfg)
  shard = named(mesh, param_specs(boxed, make_rules(rules, mesh, logical_names(boxed)), mesh))
  src = TensorSource(hf_dir)
  dtype = np.dtype(_np_dtype(cfg.param_dtype))
  groups: dict = {}
  for name, row, layer in entries(cfg):
    groups.setdefault(row.path, []).append((name, row, layer))
  params: dict = {}
  for path, items in groups.items():
    arrs = []
    for name, row, _ in items:
      if name not in src:
        raise ConversionError(f"{hf_dir}: tensor {name!r} is missing from the checkpoint")
      if src.shape(name) != tuple(row.hf_shape(cfg)):
        raise ConversionError(f"{src.file_of(name)}: tensor {name!r} has shape "
                              f"{src.shape(name)}, config.json implies {row.hf_shape(cfg)}")
      arrs.append(np.asarray(row.to_param(src.get(name), cfg)).astype(dtype))
    host = arrs[0] if items[0][2] is None else np.stack(arrs)
    del arrs
    node = params
    for k in path[:-1]:
      node = node.setdefault(k, {})
    s = shard
    for k in path:
      s = s[k]
    node[path[-1]] = shard_tree(host, s)
    del host
  return params, cfg


# ----------------------------------------------------------------------------- step

def check_batch(batch, sh: TrainShardings) -> None:
  """Every leaf must be [A, M, ...] with M divisible by the data-parallel size."""
  axes = _axes(sh.batch.spec[1]) if len(sh.batch.spec) > 1 else ()
  n = math.prod(axis_sizes(sh.mesh)[a] for a in axes)
  for path, x in jax.tree_util.tree_flatten_with_path(batch)[0]:
    shape = np.shape(x)
    if len(shape) < 2:
      raise InputError(f"batch leaf {_path_str(path)} has shape {shape}: expected leading "
                       "[accumulation A, micro-batch M] axes")
    if shape[1] % n:
      raise InputError(f"batch leaf {_path_str(path)}: micro-batch size M={shape[1]} is not "
                       f"divisible by the data-parallel size {n} "
                       f"({' x '.join(f'{a}={axis_sizes(sh.mesh)[a]}' for a in axes)})")


def jit_train_step(step: Callable, sh: TrainShardings) -> Callable:
  """``step(state, ref_params, batch, rng)`` jitted with explicit shardings; the state is
  donated, the reference is not. Returns a function that checks the batch shape first
  (one clear error instead of an XLA one) and then runs the compiled step."""
  compiled: dict = {}  # the state's static ``tx`` is part of its pytree structure

  def jitted(tx):
    if id(tx) not in compiled:
      state_sh = sh.state.replace(tx=tx)
      compiled[id(tx)] = (tx, jax.jit(
          step, in_shardings=(state_sh, sh.reference, sh.batch, sh.replicated),
          out_shardings=(state_sh, sh.replicated), donate_argnums=(0,)))
    return compiled[id(tx)][1]

  def run(state, ref_params, batch, rng):
    check_batch(batch, sh)
    return jitted(state.tx)(state, ref_params, batch, rng)
  run.jitted = jitted
  return run


def local_rows(global_rows: int, sharding: NamedSharding, axis: int = 1) -> slice:
  """The rows of the (global) micro-batch axis whose data this process must provide."""
  shape = [1] * (axis + 1)
  shape[axis] = global_rows
  idx = sharding.addressable_devices_indices_map(tuple(shape)).values()
  ranges = sorted({(s[axis].start or 0, global_rows if s[axis].stop is None else s[axis].stop)
                   for s in idx})
  start, stop = ranges[0][0], max(r[1] for r in ranges)
  covered = sum(b - a for a, b in ranges)
  if covered != stop - start:
    raise InputError(f"this process's rows of the batch are not contiguous: {ranges}")
  return slice(start, stop)


def make_global_batch(local_batch, sharding: NamedSharding, global_rows: Optional[int] = None):
  """Per-process numpy leaves [A, M_local, ...] -> global jax.Arrays [A, M, ...]."""
  def one(x):
    x = np.asarray(x)
    shape = None
    if global_rows is not None:
      shape = (x.shape[0], global_rows) + x.shape[2:]
    return jax.make_array_from_process_local_data(sharding, x, shape)
  return jax.tree.map(one, local_batch)


# ----------------------------------------------------------------------------- hosts

def multiprocess_env() -> Optional[str]:
  """The multi-process launcher detected from the environment, or None."""
  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS") and int(env.get("JAX_NUM_PROCESSES", "1")) > 1:
    return "JAX_COORDINATOR_ADDRESS"
  if env.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return "megascale"
  if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
    return "TPU_WORKER_HOSTNAMES"
  if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
    return "slurm"
  if int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return "openmpi"
  return None


def initialize_distributed(requested: bool = False, *, coordinator_address: str = "",
                           num_processes: int = 0, process_id: int = -1,
                           local_device_ids: Optional[Sequence[int]] = None) -> bool:
  """Call ``jax.distributed.initialize`` once, only when ``requested`` or when a
  multi-process launcher is detected; a plain single host is left untouched. Unset
  arguments fall back to JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID,
  then to jax's own cluster detection (TPU VM metadata, SLURM, Open MPI).
  Returns whether the distributed runtime is up."""
  if jax.distributed.is_initialized():
    return True
  detected = multiprocess_env()
  if not (requested or detected):
    return False
  env = os.environ
  kw: dict[str, Any] = {}
  addr = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS", "")
  n = num_processes or int(env.get("JAX_NUM_PROCESSES", "0") or 0)
  pid = process_id if process_id >= 0 else int(env.get("JAX_PROCESS_ID", "-1") or -1)
  if addr:
    kw["coordinator_address"] = addr
  if n:
    kw["num_processes"] = n
  if pid >= 0:
    kw["process_id"] = pid
  if local_device_ids is not None:
    kw["local_device_ids"] = list(local_device_ids)
  logging.info("jax.distributed.initialize(%s) (requested=%s, detected=%s)", kw, requested,
               detected)
  try:
    jax.distributed.initialize(**kw)
  except ValueError as e:
    raise InputError(
        f"jax.distributed.initialize failed: {str(e).rstrip('.')}. Outside a TPU pod / "
        "SLURM / MPI job set distributed.coordinator_address, num_processes and process_id "
        "(or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)") from e
  return True


def initialize_from_config(config) -> bool:
  d = config.get("distributed") or {}
  ids = d.get("local_device_ids", "")
  return initialize_distributed(
      bool(config.get("jax_distributed", False)),
      coordinator_address=d.get("coordinator_address", ""),
      num_processes=int(d.get("num_processes", 0)), process_id=int(d.get("process_id", -1)),
      local_device_ids=[int(i) for i in str(ids).split(",") if i.strip()] if ids else None)


def allgather_host(x) -> np.ndarray:
  """[process_count, ...]: every process's host array ``x`` (same shape and dtype on
  all), stacked in process order. A collective: every process must call it."""
  x = np.asarray(x)
  if jax.process_count() == 1:
    return x[None]
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=False))


def broadcast_from_main(value: int) -> int:
  """Process 0's ``value`` on every process (a collective: every process must call it)."""
  if jax.process_count() == 1:
    return int(value)
  from jax.experimental import multihost_utils
  return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def is_main_process() -> bool:
  """Only process 0 writes logs and exports."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reaches this point (after process 0 wrote files the
  others read next); a no-op with one process."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)
