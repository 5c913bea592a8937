"""convert mode: HF checkpoint dir -> orbax model dir (<workdir>/model).

With several processes (multi-host), process 0 converts and the others wait for it."""
import time

from absl import logging

from t3d_jax.convert import convert_hf_to_model_dir
from t3d_jax.distributed import barrier, is_main_process
from t3d_jax.errors import InputError
from t3d_jax.modes.stage import Result, Stage
from t3d_jax.workdir import Workdir


def run(config) -> Result:
  if not config.hf_dir:
    raise InputError("convert mode needs --config.hf_dir=<Hugging Face checkpoint dir>")
  t0 = time.time()
  out = Workdir(config).model
  if is_main_process():
    cfg = convert_hf_to_model_dir(config.hf_dir, out, config.param_dtype or None,
                                  overwrite=config.overwrite, this_process_only=True)
    logging.info("converted %s -> %s (%s, %d layers) in %.1fs", config.hf_dir, out,
                 cfg.param_dtype, cfg.num_layers, time.time() - t0)
  barrier("convert: model dir written")
  return Result("convert", (out,))


STAGE = Stage("convert", run, "HF checkpoint dir -> orbax model dir", in_pipeline=False,
              keys=("hf_dir", "param_dtype", "model_dir"),
              outputs=lambda config, layout: [layout.model])
