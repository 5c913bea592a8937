"""export mode: orbax model dir -> Hugging Face dir that transformers loads.

With several processes (multi-host), all read the model dir, process 0 writes the HF dir."""
import time

import jax
from absl import logging

from t3d_jax.convert import export_model_dir_to_hf, load_params
from t3d_jax.distributed import barrier
from t3d_jax.settings import model_dir, parse_size


def run(config) -> None:
  src = model_dir(config)
  out = config.export_dir or f"{config.workdir}/hf_export"
  t0 = time.time()
  params, _ = load_params(src)  # every process (an orbax restore syncs them all)
  if jax.process_index() == 0:
    export_model_dir_to_hf(src, out, max_shard_bytes=parse_size(config.max_shard_size),
                           overwrite=config.overwrite, dtype=config.export_dtype or None,
                           params=params)
    logging.info("exported %s -> %s in %.1fs", src, out, time.time() - t0)
  barrier("export: HF dir written")
