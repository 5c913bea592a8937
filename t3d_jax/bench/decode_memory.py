"""Per-device memory of decoding, from XLA's analysis of the decoder compiled ahead of time
for a TPU topology on this CPU machine (``python -m t3d_jax.bench memory --decode ...``).

  python -m t3d_jax.bench memory --decode --model llada-8b --tpu v5p-16 --batch 64 \\
      --prompt 512 --canvas 512 [--attention dense,splash] [--decode_fit] [--cache none]

The decoder is the one that runs (:func:`t3d_jax.sampling.make_generate`, the family's
core, layers unrolled, params in the decode layout, bf16), its batch split over every
device of the slice (``decode.data_parallel``: params replicated), the prompts and the
canvas at the given lengths. ``--decode_fit`` doubles the canvas from ``--canvas`` until the
compiled peak exceeds the device's HBM or the compile fails (at most ``--steps``
``--doublings``). ``--model`` is a preset (:data:`PRESETS`: the architecture keys of the
published config.json files) or a path to an HF dir / config.json of any family. Needs
the TPU compiler (the ``libtpu`` package) importable; no TPU (README, Benchmarks).
"""
from __future__ import annotations

import json
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from t3d_jax.errors import InputError

GiB = 1024 ** 3

# the architecture keys of the published checkpoints' config.json (GSAI-ML/LLaDA-8B-Instruct,
# Dream-org/Dream-v0-Instruct-7B); enough for the family's config_from_hf
PRESETS = {
    "llada-8b": dict(model_type="llada", d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32,
                     mlp_hidden_size=12288, vocab_size=126464, embedding_size=126464,
                     rope_theta=500000.0, rms_norm_eps=1e-5, weight_tying=False,
                     include_qkv_bias=False, mask_token_id=126336),
    "dream-7b": dict(model_type="Dream", hidden_size=3584, num_hidden_layers=28,
                     num_attention_heads=28, num_key_value_heads=4, intermediate_size=18944,
                     vocab_size=152064, rope_theta=1000000.0, rms_norm_eps=1e-6,
                     tie_word_embeddings=False, mask_token_id=151666),
}


def model_of(name: str):
  """The model config of a preset name, an HF dir or a config.json path."""
  from t3d_jax.convert.hf import config_from_hf
  if name in PRESETS:
    return config_from_hf(PRESETS[name], where=f"preset {name}")
  p = Path(name)
  p = p / "config.json" if p.is_dir() else p
  if not p.is_file():
    raise InputError(f"--model {name!r}: neither a preset ({', '.join(PRESETS)}) nor an HF "
                     "dir / config.json")
  return config_from_hf(json.loads(p.read_text()), where=str(p))


def analysis(cfg, topology: str, *, batch: int, prompt: int, canvas: int, block: int,
             steps: int, cache: str = "none"):
  """XLA's per-device memory analysis (dict of byte counts with ``peak``) of the decoder
  compiled for ``topology``, or a string saying why it did not compile."""
  from jax.experimental import topologies

  from t3d_jax.models import family as families
  from t3d_jax.models.sdar import unstack_layers
  from t3d_jax.sampling import DecodeConfig, make_generate
  from t3d_jax.sampling.steps import Knobs
  try:
    topo = topologies.get_topology_desc(topology, "tpu")
  except Exception as e:  # noqa: BLE001 - report why, whatever it is
    return f"AOT compile for {topology!r} unavailable here: {type(e).__name__}: {e}"
  mesh = Mesh(np.asarray(topo.devices), ("data",))
  mask = cfg.mask_token_id if cfg.mask_token_id is not None else cfg.vocab_size - 1
  dcfg = DecodeConfig(block_size=block, denoising_steps=steps, max_new_tokens=canvas,
                      mask_id=mask, cache=cache)
  dec = make_generate(cfg, dcfg, mesh=mesh)
  rep, rows = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
  net = families.of_config(cfg).network
  shapes = jax.eval_shape(unstack_layers, nn.unbox(net.abstract_params(cfg)))
  params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), shapes)
  ids = jax.ShapeDtypeStruct((batch, prompt), np.int32, sharding=rows)
  lens = jax.ShapeDtypeStruct((batch,), np.int32, sharding=rows)
  keys = jax.ShapeDtypeStruct((batch,), jax.random.key(0).dtype, sharding=rows)
  knobs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep),
                       Knobs.of(dcfg))
  try:
    mem = dec.lower_shapes(params, ids, lens, keys, knobs).compile().memory_analysis()
  except jax.errors.JaxRuntimeError as e:  # e.g. RESOURCE_EXHAUSTED: does not fit
    return f"AOT compile failed: {str(e).splitlines()[0][:300]}"
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
            "temp_size_in_bytes")
  vals = {f: getattr(mem, f, 0) for f in fields}
  vals["peak"] = (vals["argument_size_in_bytes"] + vals["output_size_in_bytes"]
                  - vals["alias_size_in_bytes"] + vals["temp_size_in_bytes"])
  return dict(vals, devices=len(topo.devices), kind=topo.devices[0].device_kind)


def run(model: str, topology: str, hbm_bytes: int, *, batch: int, prompt: int, canvas: int,
        block: int, steps: int, attention, cache: str, fit: bool, doublings: int) -> int:
  """Prints one row per (attention, canvas): args, temporaries and peak GiB per device,
  and whether it fits; with ``fit`` the longest canvas that does per attention kind."""
  base = model_of(model).replace(dtype="bfloat16", param_dtype="bfloat16")
  print(f"# decoding {model} on {topology}: batch {batch} split over the devices, prompt "
        f"{prompt}, block {block}, {steps} steps per block, cache {cache}, bf16, "
        f"HBM {hbm_bytes / GiB:.0f} GiB per device", flush=True)
  print("attention | canvas | args GiB | temp GiB | peak GiB | fits")
  print("--- | ---: | ---: | ---: | ---: | ---")
  best = {}
  for kind in attention:
    cfg = base.replace(attention=kind)
    for i in range(doublings + 1 if fit else 1):
      g = canvas << i
      a = analysis(cfg, topology, batch=batch, prompt=prompt, canvas=g, block=block,
                   steps=steps, cache=cache)
      if isinstance(a, str):
        if "unavailable" in a:
          print(f"error: {a}")
          return 2
        print(f"{kind} | {g} | - | - | - | no ({a})", flush=True)
        break
      ok = a["peak"] <= hbm_bytes
      print(f"{kind} | {g} | {a['argument_size_in_bytes'] / GiB:.2f} | "
            f"{a['temp_size_in_bytes'] / GiB:.2f} | {a['peak'] / GiB:.2f} | "
            f"{'yes' if ok else 'no'}", flush=True)
      if not ok:
        break
      best[kind] = g
  if fit:
    for kind in attention:
      print(f"longest canvas that fits with {kind}: {best.get(kind, 'none')}"
            f"{' (the search stopped there)' if best.get(kind) == canvas << doublings else ''}")
  return 0
