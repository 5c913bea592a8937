"""Per-device memory plan of a training config, from ``jax.eval_shape`` and the mesh alone
(``--decode``: the decoder's, compiled ahead of time: bench/decode_memory.py).

  python -m t3d_jax.bench memory --config configs/sdar_4b_math.py [--tpu v5p-16]
      [--devices N] [--seq_len N] [--hbm_gib G] [--aot [--fit micro_batch|seq_len
      --attention dense,splash]] [--config.key=value ...]

Nothing is allocated: the train state's shapes come from ``jax.eval_shape``, the mesh is a
``jax.sharding.AbstractMesh`` sized from the named TPU slice (or ``--devices``), and each
leaf's per-device bytes are those of its shard under the config's logical-axis rules
(``t3d_jax.sharding``, ``t3d_jax.train.sharded``). Activations are an estimate (formula in ``activation_bytes``).

``--aot`` compiles the real sharded step for the TPU topology on this CPU machine when the
``libtpu`` package (the version ``jax[tpu]`` pins) is importable, and prints XLA's memory
analysis. For SDAR-4B on v5p-16 XLA reported args 7.50 GiB (= params + optimiser +
reference here) and temporaries 24.18 GiB, peak 31.67 GiB, against this estimate's 33.63.
"""
from __future__ import annotations

import dataclasses
import math
import re
import sys
from typing import Any, Optional

import jax
import numpy as np

from t3d_jax import sharding
from t3d_jax.dtypes import as_dtype
from t3d_jax.errors import InputError
from t3d_jax.train import sharded

GiB = 1024 ** 3

# generation -> (what the number in the name counts, TensorCores per device, HBM GiB per
# device). v2/v3: each TensorCore is a device; v4/v5p: two cores per chip as one megacore
# device; v5e/v6e: the name counts chips, one core each.
TPU_GENERATIONS = {
    "v2": ("cores", 1, 8), "v3": ("cores", 1, 16), "v4": ("cores", 2, 32),
    "v5p": ("cores", 2, 95), "v5e": ("chips", 1, 16), "v5litepod": ("chips", 1, 16),
    "v6e": ("chips", 1, 32),
}


@dataclasses.dataclass(frozen=True)
class Slice:
  name: str
  devices: int
  hbm_bytes: int
  hosts: int


def tpu_slice(name: str) -> Slice:
  """'v4-8' -> 4 devices of 32 GiB on 1 host; 'v5p-16' -> 8 devices of 95 GiB, 2 hosts."""
  m = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", name.strip().lower())
  if not m or m.group(1) not in TPU_GENERATIONS:
    raise InputError(f"TPU slice {name!r}: expected <generation>-<count> with generation in "
                     f"{', '.join(TPU_GENERATIONS)} (e.g. v4-8, v5p-16, v5litepod-8)")
  unit, per_dev, hbm = TPU_GENERATIONS[m.group(1)]
  n = int(m.group(2))
  if n % per_dev:
    raise InputError(f"TPU slice {name!r}: {n} {unit} is not a whole number of devices")
  devices = n // per_dev
  per_host = 8 if m.group(1) in ("v2", "v3") or (unit == "chips" and devices <= 8) else 4
  return Slice(name, devices, hbm * GiB, -(-devices // per_host))


def model_config(config):
  """The model config of a config: ``config.arch`` when it names its vocab_size (planning
  configs, training from scratch; its family's config class), else the model dir's
  sdar_config.json; numerics from ``config.model``."""
  from t3d_jax.models.family import arch_config
  from t3d_jax.models.numerics import Numerics
  numerics = Numerics.of(config.model) if "model" in config else Numerics()
  if "arch" in config and config.arch.vocab_size:
    return numerics.apply(arch_config(config.arch, param_dtype=numerics.param_dtype),
                          train=True)
  from pathlib import Path

  from t3d_jax.checkpoint import load_model_config
  from t3d_jax.workdir import Workdir
  d = Workdir(config).model if (config.get("model_dir") or config.get("workdir")) else ""
  if d and (Path(d) / "sdar_config.json").is_file():
    return numerics.apply(load_model_config(d).replace(param_dtype=numerics.param_dtype),
                          train=True)
  raise InputError("the config has no architecture: set config.arch (see configs/sdar_*.py) "
                   "or point model_dir/workdir at a converted model dir")


def _shard_bytes(shape, dtype, spec, sizes) -> int:
  n = 1
  for dim, size in enumerate(shape):
    axes = sharding.mesh_axes(spec[dim]) if dim < len(spec) else ()
    n *= -(-size // math.prod(sizes[a] for a in axes))
  return n * np.dtype(dtype).itemsize


def tree_bytes(abstract, specs, sizes) -> int:
  return sum(_shard_bytes(a.shape, a.dtype, s.spec if hasattr(s, "spec") else s, sizes)
             for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(
                 specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))))


def activation_bytes(cfg, *, b: int, seq: int, rows: int, tensor: int) -> tuple[int, str]:
  """Estimate of the peak activation bytes of one micro-batch on one device.

  b local examples, T = seq tokens (L0 + 2 L1), R = rows with a loss (L0 + L1), t = tensor
  size, c = compute bytes, fp32 = 4:
    layer(T)  = b*T*[ c*((nh + 2 nkv) hd / t + nh hd / t + 3 I / t + 2 H) + 4*2*nh*T / t ] + b*T*T
                (q, k, v, attention output, MLP gate/up/hidden, residual; fp32 scores and
                 probs; the bool mask)
    saved     = L * (remat full: b*T*H*c, each layer's input;
                     remat dots: b*T*[c*((nh + 2 nkv) hd / t + nh hd / t + 2 I / t + 2 H
                                 + nh*T / t)], the matmul outputs;
                     remat none: layer(T))
    backward  = 2 * layer(T)  (one layer recomputed plus its gradients)
    logits    = 2 * b*T*V/t*c (target, reference) + 3 * b*R*V/t*4 (fp32 log-softmax of
                target and reference rows, and the target's gradient)
    total     = saved + backward + logits
  """
  c = as_dtype(cfg.dtype).itemsize
  t, T, H, V = tensor, seq, cfg.hidden_size, cfg.vocab_size
  nh, nkv, hd, inter = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size
  layer = b * T * (c * ((nh + 2 * nkv) * hd / t + nh * hd / t + 3 * inter / t + 2 * H)
                   + 4 * 2 * nh * T / t) + b * T * T
  dots = b * T * c * ((nh + 2 * nkv) * hd / t + nh * hd / t + 2 * inter / t + 2 * H + nh * T / t)
  saved = cfg.num_layers * {"full": b * T * H * c, "dots": dots, "none": layer}[cfg.remat]
  logits = 2 * b * T * V / t * c + 3 * b * rows * V / t * 4
  total = saved + 2 * layer + logits
  formula = ("saved (remat full: L*b*T*H*c; dots: L*b*T*c*((nh+2nkv)hd/t + nh hd/t + 2I/t + 2H"
             " + nh T/t); none: L*layer) + 2*layer + logits; layer = b*T*[c*((nh+2nkv)"
             "hd/t + nh hd/t + 3I/t + 2H) + 8 nh T/t] + b*T*T; logits = 2 b T V/t c + 3 b R V/t 4")
  return int(total), formula


def plan(config, *, devices: Optional[int] = None, hbm_bytes: Optional[int] = None,
         seq_len: Optional[int] = None) -> dict[str, Any]:
  """The memory plan as a dict (bytes per device)."""
  from t3d_jax.models.sdar import abstract_params
  from t3d_jax.train.trainer import OptimConfig, make_optimizer
  sl = tpu_slice(config.mesh.tpu) if config.mesh.get("tpu") else None
  n = devices or (sl.devices if sl else jax.device_count())
  hbm = hbm_bytes or (sl.hbm_bytes if sl else None)
  cfg = model_config(config)
  mesh = sharding.make_abstract_mesh(dict(config.mesh.shape), n)
  sizes = sharding.axis_sizes(mesh)
  boxed = abstract_params(cfg)
  rules = sharding.make_rules(config.mesh.rules, mesh, sharding.logical_names(boxed))
  pspecs = sharding.param_specs(boxed, rules, mesh)
  optim = OptimConfig.from_config(config.optim)
  state = sharded.abstract_train_state(cfg, make_optimizer(optim))
  ospecs = sharding.mirror_params(state.opt_state, state.params, pspecs,
                                  jax.sharding.PartitionSpec())
  params = tree_bytes(state.params, pspecs, sizes)
  opt = tree_bytes(state.opt_state, ospecs, sizes)
  d = config.distill
  dp = sizes["data"] * sizes["fsdp"]
  micro = int(d.micro_batch)
  if micro % dp:
    raise InputError(f"distill.micro_batch={micro} is not divisible by the data-parallel size "
                     f"{dp} (data={sizes['data']} x fsdp={sizes['fsdp']})")
  if int(d.global_batch) % micro:
    raise InputError(f"distill.global_batch={d.global_batch} is not a multiple of "
                     f"distill.micro_batch={micro}")
  l0, l1 = int(d.max_prompt_len), int(d.max_gen_length)
  seq = seq_len or l0 + 2 * l1
  rows = seq - l1 if seq_len is None else seq - (seq - l0) // 2
  acts, formula = activation_bytes(cfg, b=micro // dp, seq=seq, rows=rows, tensor=sizes["tensor"])
  n_params = sum(math.prod(a.shape) for a in jax.tree.leaves(state.params))
  rows_out = {"params": params, "optimizer state": opt, "reference": params,
              "gradients (accumulator + micro-batch)": 2 * params, "activations (estimate)": acts}
  return dict(model=cfg, n_params=n_params, devices=n, mesh=sizes, slice=sl, hbm=hbm,
              rows=rows_out, total=sum(rows_out.values()), seq=seq, local_batch=micro // dp,
              accumulation=int(d.global_batch) // micro, formula=formula)


def format_plan(p: dict) -> str:
  cfg = p["model"]
  mesh = " x ".join(f"{k}={v}" for k, v in p["mesh"].items())
  where = f"{p['slice'].name} ({p['devices']} devices, {p['slice'].hosts} host(s))" \
      if p["slice"] else f"{p['devices']} devices"
  lines = [f"model: {p['n_params'] / 1e9:.2f}B params, {cfg.num_layers} layers, hidden "
           f"{cfg.hidden_size}, vocab {cfg.vocab_size}, params {cfg.param_dtype}, compute "
           f"{cfg.dtype}, remat={cfg.remat}",
           f"slice: {where}; mesh {mesh}",
           f"batch: {p['local_batch']} example(s) per device per micro-batch, "
           f"{p['accumulation']} accumulation steps, sequence {p['seq']} tokens",
           "", f"{'per device':40s} {'GiB':>8s}"]
  for k, v in p["rows"].items():
    lines.append(f"{k:40s} {v / GiB:8.2f}")
  lines.append(f"{'total':40s} {p['total'] / GiB:8.2f}")
  if p["hbm"]:
    fits = "fits" if p["total"] <= 0.9 * p["hbm"] else "DOES NOT FIT"
    lines.append(f"{'HBM per device':40s} {p['hbm'] / GiB:8.2f}   -> {fits} "
                 f"({100 * p['total'] / p['hbm']:.0f}% of HBM; 90% is the usable budget)")
  lines += ["", "activations = " + p["formula"]]
  return "\n".join(lines)


# slice -> TPU topology name for jax.experimental.topologies (chips, 3D for v4/v5p)
_TOPOLOGY = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4"}
_TOPOLOGY_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8"}


def topology_name(sl: Slice) -> str:
  gen = sl.name.split("-")[0]
  chips = sl.devices
  table = _TOPOLOGY if gen in ("v4", "v5p") else _TOPOLOGY_2D
  if chips not in table:
    raise InputError(f"no TPU topology known for {sl.name}; pass --topology")
  return f"{'v5e' if gen == 'v5litepod' else gen}:{table[chips]}"


def aot_analysis(config, topology: str = ""):
  """Ahead-of-time compile the sharded T3D step for the config's TPU topology on this
  machine (needs the libtpu package importable; no TPU). Returns XLA's per-device memory
  analysis as a dict (byte counts, ``peak``, ``name``, ``devices``, ``kind``), or a
  string saying why it could not compile."""
  from jax.experimental import topologies
  from jax.sharding import PartitionSpec as P

  from t3d_jax.distill.losses import LossConfig
  from t3d_jax.distill.step import make_train_step
  from t3d_jax.train.trainer import OptimConfig, make_optimizer
  name = topology or topology_name(tpu_slice(config.mesh.tpu))
  try:
    topo = topologies.get_topology_desc(name, "tpu")
  except Exception as e:  # noqa: BLE001 - report why, whatever it is
    return f"AOT compile for {name!r} unavailable here: {type(e).__name__}: {e}"
  cfg = model_config(config)
  try:
    mesh = sharding.make_mesh(dict(config.mesh.shape), topo.devices)
  except AssertionError:  # v4 topologies list both cores of a chip (no megacore)
    devs = np.asarray(topo.devices).reshape(
        sharding.mesh_shape(dict(config.mesh.shape), len(topo.devices)))
    mesh = jax.sharding.Mesh(devs, sharding.MESH_AXES,
                             axis_types=(jax.sharding.AxisType.Auto,) * 3)
  tx = make_optimizer(OptimConfig.from_config(config.optim))
  sh = sharded.train_shardings(cfg, tx, mesh, config.mesh.rules)
  state = sharding.abstract_sharded(sharded.abstract_train_state(cfg, tx), sh.state)
  ref = sharding.abstract_sharded(state.params, sh.reference)
  d = config.distill
  a, m = int(d.global_batch) // int(d.micro_batch), int(d.micro_batch)
  l0, l1 = int(d.max_prompt_len), int(d.max_gen_length)
  sds = lambda shape, dt: jax.ShapeDtypeStruct((a, m) + shape, dt, sharding=sh.batch)
  batch = dict(ids=sds((l0 + 2 * l1,), np.int32), positions=sds((l0 + 2 * l1,), np.int32),
               labels=sds((l0 + l1,), np.int32), p_mask=sds((l0 + l1,), bool),
               step_map=sds((l1,), np.int32), weight=sds((), np.float32))
  rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype,
                             sharding=jax.sharding.NamedSharding(mesh, P()))
  loss = LossConfig.from_config(config.loss, block_size=config.examples.block_size
                                or config.decode.block_size)
  step = make_train_step(cfg, loss, OptimConfig.from_config(config.optim),
                         mask_id=cfg.vocab_size - 1, pad_id=0)
  jitted = sharded.jit_train_step(step, sh).jitted(tx)
  try:
    with sharding.in_mesh(mesh):  # the attention kernel shard_maps itself over it
      mem = jitted.lower(state, ref, batch, rng).compile().memory_analysis()
  except jax.errors.JaxRuntimeError as e:  # e.g. RESOURCE_EXHAUSTED: does not fit
    return f"AOT compile for {name} ({len(topo.devices)} devices) failed: {e}"
  vals = {f: getattr(mem, f, 0) for f in _FIELDS}
  vals["peak"] = (vals["argument_size_in_bytes"] + vals["output_size_in_bytes"]
                  - vals["alias_size_in_bytes"] + vals["temp_size_in_bytes"])
  return dict(vals, name=name, devices=len(topo.devices), kind=topo.devices[0].device_kind)


_FIELDS = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
           "temp_size_in_bytes", "generated_code_size_in_bytes")


def aot_compile(config, topology: str = "") -> str:
  """:func:`aot_analysis` as text."""
  a = aot_analysis(config, topology)
  if isinstance(a, str):
    return a
  return "\n".join([f"AOT compile for {a['name']} ({a['devices']} devices, {a['kind']}, "
                    f"attention {model_config(config).attention}): XLA memory analysis per "
                    f"device"] + [f"  {f:32s} {a[f] / GiB:8.2f} GiB" for f in _FIELDS] +
                   [f"  {'peak (args + out - alias + temp)':32s} {a['peak'] / GiB:8.2f} GiB"])


# what --fit doubles: the micro-batch (examples per forward), or the response length L1
# (the sequence is L0 + 2 L1)
FIT_KEYS = {"micro_batch": "distill.micro_batch", "seq_len": "distill.max_gen_length"}


def fit(config, key: str, kinds, hbm_bytes: int, topology: str = "", steps: int = 4):
  """For each attention kind, double ``key`` (:data:`FIT_KEYS`) from the config's value
  until XLA's compiled peak exceeds ``hbm_bytes`` or the compile fails (at most ``steps``
  doublings). Yields (kind, value, sequence length, micro-batch, peak bytes or None, fits)."""
  d = config.distill
  for kind in kinds:
    for i in range(steps + 1):
      c = config.copy_and_resolve_references()
      with c.unlocked():
        c.model.attention = kind
        if key == "micro_batch":
          c.distill.micro_batch = int(d.micro_batch) << i
          c.distill.global_batch = max(int(d.global_batch), c.distill.micro_batch)
        else:
          c.distill.max_gen_length = int(d.max_gen_length) << i
      a = aot_analysis(c, topology)
      if isinstance(a, str) and "unavailable" in a:
        raise InputError(a)
      peak = None if isinstance(a, str) else a["peak"]
      ok = peak is not None and peak <= hbm_bytes
      yield (kind, c.distill.micro_batch if key == "micro_batch" else c.distill.max_gen_length,
             int(c.distill.max_prompt_len) + 2 * int(c.distill.max_gen_length),
             c.distill.micro_batch, peak, ok)
      if not ok:
        break




def main(argv: list[str]) -> int:
  from absl import flags
  from ml_collections import config_flags
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "configs/<name>.py", flag_values=fv,
                                  lock_config=True)
  flags.DEFINE_string("tpu", None, "TPU slice name, overrides config.mesh.tpu", flag_values=fv)
  flags.DEFINE_integer("devices", None, "device count without a slice name", flag_values=fv)
  flags.DEFINE_integer("seq_len", None, "tokens per example (default L0 + 2 L1 from the "
                       "config's max_prompt_len / max_gen_length)", flag_values=fv)
  flags.DEFINE_float("hbm_gib", None, "HBM per device, overrides the slice's", flag_values=fv)
  flags.DEFINE_bool("aot", False, "also ahead-of-time compile the step for the TPU topology "
                    "(needs the libtpu package; no TPU)", flag_values=fv)
  flags.DEFINE_string("topology", "", "TPU topology for --aot, e.g. v5p:2x2x2 (default: "
                      "from the slice)", flag_values=fv)
  flags.DEFINE_enum("fit", None, list(FIT_KEYS), "with --aot: double this key from the "
                    "config's value until the compiled step no longer fits", flag_values=fv)
  flags.DEFINE_list("attention", ["dense", "splash"], "attention kernels --fit compares",
                    flag_values=fv)
  flags.DEFINE_bool("decode", False, "the decoder's memory instead of the training step's "
                    "(bench/decode_memory.py; always compiled ahead of time)", flag_values=fv)
  flags.DEFINE_string("model", "llada-8b", "--decode: a preset or an HF dir / config.json",
                      flag_values=fv)
  flags.DEFINE_integer("batch", 64, "--decode: sequences per call", flag_values=fv)
  flags.DEFINE_integer("prompt", 512, "--decode: prompt tokens", flag_values=fv)
  flags.DEFINE_integer("canvas", 512, "--decode: new tokens (the first, with --fit)",
                       flag_values=fv)
  flags.DEFINE_integer("block", 32, "--decode: block size", flag_values=fv)
  flags.DEFINE_integer("steps", 32, "--decode: denoising steps per block", flag_values=fv)
  flags.DEFINE_string("cache", "none", "--decode: decode.cache", flag_values=fv)
  flags.DEFINE_integer("doublings", 3, "--decode --fit: at most this many", flag_values=fv)
  flags.DEFINE_bool("decode_fit", False, "--decode: double the canvas until it no longer "
                    "fits", flag_values=fv)
  fv(["memory"] + list(argv))
  if fv.decode:
    from t3d_jax.bench import decode_memory
    sl = tpu_slice(fv.tpu or "v5p-16")
    hbm = int(fv.hbm_gib * GiB) if fv.hbm_gib else sl.hbm_bytes
    try:
      return decode_memory.run(fv.model, fv.topology or topology_name(sl), hbm,
                               batch=fv.batch, prompt=fv.prompt, canvas=fv.canvas,
                               block=fv.block, steps=fv.steps, attention=fv.attention,
                               cache=fv.cache, fit=fv.decode_fit, doublings=fv.doublings)
    except InputError as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
  config = fv.config
  if config is None:
    print("usage: python -m t3d_jax.bench memory --config configs/X.py", file=sys.stderr)
    return 2
  if fv.tpu:
    with config.unlocked():
      config.mesh.tpu = fv.tpu
  try:
    p = plan(config, devices=fv.devices, seq_len=fv.seq_len,
             hbm_bytes=int(fv.hbm_gib * GiB) if fv.hbm_gib else None)
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(format_plan(p))
  if fv.aot and fv.fit:
    return _print_fit(config, fv, p["hbm"])
  if fv.aot:
    print(aot_compile(config, fv.topology), flush=True)
  return 0


def _print_fit(config, fv, hbm) -> int:
  print(f"fit: doubling {FIT_KEYS[fv.fit]} until XLA's peak exceeds {hbm / GiB:.0f} GiB")
  print(f"{'attention':10s} {'micro_batch':>11s} {'seq_len':>8s} {'peak GiB':>9s}  fits")
  best = {}
  try:
    for kind, _, seq, mb, peak, ok in fit(config, fv.fit, fv.attention, hbm, fv.topology):
      gib = "failed" if peak is None else f"{peak / GiB:.2f}"
      print(f"{kind:10s} {mb:11d} {seq:8d} {gib:>9s}  {'yes' if ok else 'no'}", flush=True)
      if ok:
        best[kind] = mb if fv.fit == "micro_batch" else seq
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for kind in fv.attention:
    print(f"largest {fv.fit} that fits with {kind}: {best.get(kind, 'none')}", flush=True)
  return 0
