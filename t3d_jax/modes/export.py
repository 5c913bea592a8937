"""export mode: orbax model dir -> Hugging Face dir that transformers loads.

With several processes (multi-host), all read the model dir, process 0 writes the HF dir."""
import time

from absl import logging

from t3d_jax.convert import export_model_dir_to_hf, load_params
from t3d_jax.distributed import barrier, is_main_process
from t3d_jax.errors import InputError
from t3d_jax.modes.stage import Result, Stage
from t3d_jax.workdir import Workdir


def parse_size(text: str) -> int:
  """'2GB' / '500MB' / '1024' -> bytes."""
  t = str(text).strip().upper()
  for unit, mult in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024), ("B", 1)):
    if t.endswith(unit):
      try:
        return int(float(t[: -len(unit)]) * mult)
      except ValueError:
        break
  try:
    return int(t)
  except ValueError:
    raise InputError(f"config max_shard_size={text!r}: expected e.g. '2GB', '500MB' or bytes")


def run(config) -> Result:
  layout = Workdir(config)
  src, out = layout.model, layout.export
  t0 = time.time()
  params, _ = load_params(src)  # every process (an orbax restore syncs them all)
  if is_main_process():
    export_model_dir_to_hf(src, out, max_shard_bytes=parse_size(config.max_shard_size),
                           overwrite=config.overwrite, dtype=config.export_dtype or None,
                           params=params)
    logging.info("exported %s -> %s in %.1fs", src, out, time.time() - t0)
  barrier("export: HF dir written")
  return Result("export", (out,))


STAGE = Stage("export", run, "orbax model dir -> Hugging Face dir that transformers loads",
              keys=("export_dir", "export_dtype", "max_shard_size", "model_dir"),
              inputs=lambda config, layout: [layout.model],
              outputs=lambda config, layout: [layout.export])
