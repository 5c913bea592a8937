"""Loading straight into shardings never materialises a second copy of the model.

In a fresh process with 8 fake CPU devices, a random ~109M-param fp32 checkpoint (HF dir
and orbax model dir; 16 layers, so no param is more than 15% of the model) is loaded into an 8-way FSDP sharding two ways. On a CPU the device
buffers are host memory too, so the loaded params take one model of RSS either way; the
host-copy path (load the whole tree, then shard it) adds a second full copy on top, the
sharded path (``convert.load_params_sharded``) only the param in flight (read, laid out,
its device slices: measured ~1.5x the largest param from an HF dir; from a model dir
orbax adds its OCDBT read cache, a fixed 100 MB whatever the model's size). The test
checks the sharded path's transient stays within twice the largest param plus 128 MiB
(60% of this model), and that the host copy, measured the same way, breaks that bound,
so the check can tell the two apart.
"""

import pytest

from t3d_jax.bench import load as bench_load
from t3d_jax.bench.convert import write_random_checkpoint


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  from t3d_jax.convert import convert_hf_to_model_dir
  root = tmp_path_factory.mktemp("load")
  nbytes = write_random_checkpoint(root / "hf", hidden=1024, layers=16, vocab=8192,
                                   dtype="float32", intermediate=1024)
  convert_hf_to_model_dir(root / "hf", root / "model")
  return root, nbytes


@pytest.mark.parametrize("source", ["hf", "model"])
def test_sharded_load_holds_no_second_copy(checkpoints, source):
  root, nbytes = checkpoints
  mib = 2**20
  host = bench_load.measure(root / source, "host", 8)
  sharded = bench_load.measure(root / source, "sharded", 8)
  assert sharded["sharded"] and sharded["nbytes"] == host["nbytes"] == nbytes
  transient = lambda m: (m["peak_mb"] - m["base_mb"]) * mib - nbytes  # above the params
  print(f"{source}: weights {nbytes / mib:.0f} MiB, largest param {sharded['largest'] / mib:.0f}"
        f" MiB; transient host copy {transient(host) / mib:.0f} MiB, sharded "
        f"{transient(sharded) / mib:.0f} MiB")
  bound = 2 * sharded["largest"] + 128 * mib
  assert bound < 0.65 * nbytes
  assert transient(sharded) <= bound, (transient(sharded) / mib, bound / mib)
  assert transient(host) > bound, (transient(host) / mib, bound / mib)
