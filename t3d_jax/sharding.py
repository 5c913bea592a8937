"""Mesh, logical-axis rules and shardings of params and batches.

Everything is explicit: the mesh comes from the config (``mesh_from_config``), the rules
map the model's logical axis names (``vocab``, ``embed``, ``heads``, ``kv_heads``,
``head_dim``, ``mlp``, ``norm``, ``layers``) and the activation name ``batch`` onto mesh
axes, and every jitted function gets explicit ``in_shardings``/``out_shardings``.

Mesh axes (outer to inner): ``data`` (pure data parallel), ``fsdp`` (data parallel whose
params/optimiser state are sharded too), ``tensor`` (heads / mlp / vocab split). The batch's
micro-batch axis M is split over ``('data', 'fsdp')``. The train state's shardings and
the jitted update step live in :mod:`t3d_jax.train.sharded`; the multi-process runtime in
:mod:`t3d_jax.distributed`.
"""
from __future__ import annotations

import contextlib
import math
from typing import Mapping, Optional, Sequence, Union

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

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


def in_mesh(mesh: Optional[Mesh]):
  """Context in which ``mesh`` is JAX's current mesh (``jax.set_mesh``) while a jitted
  function traces and runs, so that kernels XLA cannot partition (the splash attention
  Pallas call) can shard_map themselves over it; no mesh: nothing."""
  return contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh)


def axis_sizes(mesh: AnyMesh) -> dict[str, int]:
  return dict(zip(mesh.axis_names, mesh.axis_sizes))


# ----------------------------------------------------------------------------- rules

def mesh_axes(target) -> tuple[str, ...]:
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
    for a in mesh_axes(target):
      if a not in names:
        raise InputError(f"mesh.rules: logical axis {logical!r} -> mesh axis {a!r}, but the "
                         f"mesh has axes {', '.join(names)}")
    seen.add(logical)
    out.append((logical, target if target is None or isinstance(target, str)
                else tuple(target)))
  return tuple(out)


def logical_to_mesh(spec: P, rules: Rules, mesh: AnyMesh, shape=None, where: str = "") -> P:
  """Map one logical PartitionSpec to mesh axes. A mesh axis shards at most one dim
  (later dims that would reuse it stay replicated); ``shape`` checks divisibility."""
  table, sizes = dict(rules), axis_sizes(mesh)
  used, out = set(), []
  for dim, name in enumerate(spec):
    axes = []
    for n in mesh_axes(name):
      for a in mesh_axes(table.get(n)):
        if a not in used and a not in axes:
          axes.append(a)
    if shape is not None and axes:
      n_shards = math.prod(sizes[a] for a in axes)
      if shape[dim] % n_shards:
        raise InputError(
            f"{where or 'array'}: dim {dim} ({mesh_axes(name)[0]!r}) has size {shape[dim]}, not "
            f"divisible by mesh axes {'x'.join(axes)} = {n_shards}; change mesh.shape or "
            f"mesh.rules")
    used.update(axes)
    out.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
  while out and out[-1] is None:
    out.pop()
  return P(*out)


def path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def param_specs(abstract_boxed, rules: Rules, mesh: AnyMesh):
  """Mesh PartitionSpecs of a boxed (logically annotated) abstract param tree."""
  def one(path, box):
    return logical_to_mesh(box.names, rules, mesh, box.value.shape,
                           where=f"param {path_str(path)} {tuple(box.value.shape)}")
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


def batch_spec(rules: Rules) -> P:
  axes = mesh_axes(dict(rules).get("batch", DATA_AXES))
  return P(None, None if not axes else axes[0] if len(axes) == 1 else axes)


def param_shardings(model_cfg, mesh: Mesh, rules: Rules):
  """NamedShardings of the params of ``model_cfg`` under validated ``rules``."""
  from t3d_jax.models.family import of_config
  boxed = of_config(model_cfg).network.abstract_params(model_cfg)
  return named(mesh, param_specs(boxed, make_rules(rules, mesh, logical_names(boxed)), mesh))


def abstract_sharded(abstract, shardings):
  """ShapeDtypeStructs carrying shardings (targets for orbax restore)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def shard_tree(tree, shardings):
  """Place host (numpy) leaves into shardings, one leaf at a time; each device receives
  only its slice (``make_array_from_callback``)."""
  def put(x, s):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])
  return jax.tree.map(put, tree, shardings)


# ----------------------------------------------------------------------------- batches

def data_parallel(sharding: NamedSharding) -> tuple[int, str]:
  """(how many ways a batch sharding splits the micro-batch axis, e.g. "data=2 x fsdp=2")."""
  axes = mesh_axes(sharding.spec[1]) if len(sharding.spec) > 1 else ()
  sizes = axis_sizes(sharding.mesh)
  return math.prod(sizes[a] for a in axes), " x ".join(f"{a}={sizes[a]}" for a in axes)


def check_batch(batch, sharding: NamedSharding) -> None:
  """Every leaf must be [A, M, ...] with M divisible by the data-parallel size."""
  n, how = data_parallel(sharding)
  for path, x in jax.tree_util.tree_flatten_with_path(batch)[0]:
    shape = np.shape(x)
    if len(shape) < 2:
      raise InputError(f"batch leaf {path_str(path)} has shape {shape}: expected leading "
                       "[accumulation A, micro-batch M] axes")
    if shape[1] % n:
      raise InputError(f"batch leaf {path_str(path)}: micro-batch size M={shape[1]} is not "
                       f"divisible by the data-parallel size {n} ({how})")


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
