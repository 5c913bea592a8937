"""export mode: orbax model dir -> Hugging Face dir that transformers loads."""
import time

from absl import logging

from t3d_jax.config_base import model_dir, parse_size
from t3d_jax.convert import export_model_dir_to_hf


def run(config) -> None:
  src = model_dir(config)
  out = config.export_dir or f"{config.workdir}/hf_export"
  t0 = time.time()
  export_model_dir_to_hf(src, out, max_shard_bytes=parse_size(config.max_shard_size),
                         overwrite=config.overwrite, dtype=config.export_dtype or None)
  logging.info("exported %s -> %s in %.1fs", src, out, time.time() - t0)
