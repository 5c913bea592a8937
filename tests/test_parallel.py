"""Sharded update step on 8 fake CPU devices == 1 device; shardings follow the rules;
bad mesh / rules / batch give one clear error."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from t3d_jax import distributed, sharding
from t3d_jax.config_base import base_config
from t3d_jax.distill.losses import LossConfig
from t3d_jax.distill.step import make_train_step
from t3d_jax.train import sharded
from t3d_jax.train.trainer import OptimConfig, TrainState, copy_tree, make_optimizer
from t3d_jax.errors import InputError
from t3d_jax.models import init_params
from t3d_jax.models.sdar import abstract_params

from test_distill_step import MASK, MODEL, PAD, make_batch

LOSS = LossConfig(block_size=4, path_k_steps=2)
OPTIM = OptimConfig(lr=1e-3, warmup_steps=2, total_steps=10)
RULES = sharding.DEFAULT_RULES


def mesh_of(shape):
  return sharding.make_mesh(dict(zip(sharding.MESH_AXES, shape)))


def global_batch(n=8, seed=0):
  b = make_batch(n, seed)
  b["weight"][3] = 0.0  # a dropped example
  return jax.tree.map(lambda x: np.asarray(x)[None], b)  # [A=1, M=n, ...]


def sgd_like():
  """Clip + SGD: the update is linear in the gradient, so the params after one step are
  as close as the gradients (Adam's first step, g/(|g|+eps), turns 1e-9 noise on a ~0
  gradient into an lr-sized difference)."""
  return optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.5))


@pytest.fixture(scope="module")
def single():
  """Reference on one device: the step's own gradient accumulation (one compile), then
  each optimiser's update applied eagerly."""
  params = init_params(MODEL, jax.random.key(0))
  dev = jax.devices()[0]
  batch = jax.device_put(global_batch(), dev)
  step = make_train_step(MODEL, LOSS, OPTIM, mask_id=MASK, pad_id=PAD)
  rng = jax.random.fold_in(jax.random.key(1), 0)  # the step folds in state.step = 0
  grads, metrics = jax.jit(step.accumulate)(params, params, batch, rng)
  metrics = dict(metrics, grad_norm=optax.global_norm(grads))
  out = {}
  for name, tx in (("adamw", make_optimizer(OPTIM)), ("sgd", sgd_like())):
    opt = tx.init(params)
    updates, opt = tx.update(grads, opt, params)
    state = TrainState(step=jnp.ones((), jnp.int32), params=optax.apply_updates(params, updates),
                       opt_state=opt, tx=tx)
    out[name] = jax.device_get((state, metrics))
  return params, out


def expected_spec(names):
  """The rules written out by hand for this model (vocab/heads/kv_heads/mlp -> tensor,
  embed -> fsdp, rest replicated)."""
  table = {"vocab": "tensor", "embed": "fsdp", "heads": "tensor", "kv_heads": "tensor",
           "mlp": "tensor"}
  spec = [table.get(n) for n in names]
  while spec and spec[-1] is None:
    spec.pop()
  return P(*spec)


@pytest.mark.parametrize("shape,name", [((8, 1, 1), "sgd"), ((2, 4, 1), "sgd"),
                                        ((2, 2, 2), "adamw")])
def test_sharded_step_equals_single_device(single, shape, name):
  """One update step on the mesh == one device. clip+SGD: params <= 1e-6 (the update is
  linear in the gradient). AdamW: moments mu=(1-b1)g and nu=(1-b2)g^2 <= 1e-6 (so the
  gradients match), params <= 1e-6 where |g| > 1e-4 (elsewhere Adam's first step is
  lr*sign(g) of float noise). One optimiser per mesh keeps the compile time down."""
  params, ref = single
  mesh = mesh_of(shape)
  assert dict(mesh.shape) == dict(zip(sharding.MESH_AXES, shape))
  tx = sgd_like() if name == "sgd" else make_optimizer(OPTIM)
  sh = sharded.train_shardings(MODEL, tx, mesh, RULES)
  batch = sharding.make_global_batch(global_batch(), sh.batch)
  p = sharding.shard_tree(jax.device_get(params), sh.params)
  state = sharded.create_train_state(p, tx, sh)
  ref_params = copy_tree(p)
  run = sharded.jit_train_step(make_train_step(MODEL, LOSS, OPTIM, mask_id=MASK, pad_id=PAD), sh)
  new, metrics = run(state, ref_params, batch, jax.random.key(1))
  want_state, want_metrics = ref[name]
  for k in ("loss", "loss_path", "grad_norm", "logp_target_real", "examples"):
    np.testing.assert_allclose(float(metrics[k]), float(want_metrics[k]), rtol=1e-6,
                               atol=1e-7, err_msg=k)
  leaves = jax.tree_util.tree_leaves_with_path
  tree = "params" if name == "sgd" else "opt_state"
  got, want = dict(leaves(getattr(new, tree))), dict(leaves(getattr(want_state, tree)))
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), atol=1e-6, rtol=0,
                               err_msg=f"{name} {jax.tree_util.keystr(k)}")
  if name == "adamw":
    flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])
    big = np.abs(flat(want_state.opt_state[1][0].mu)) > (1 - OPTIM.b1) * 1e-4
    assert big.mean() > 0.3
    np.testing.assert_allclose(flat(new.params)[big], flat(want_state.params)[big], atol=1e-6,
                               rtol=0)
  assert int(new.step) == 1
  # the new state keeps the rules' shardings
  boxes = jax.tree.leaves(abstract_params(MODEL),
                          is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  for box, arr in zip(boxes, jax.tree.leaves(new.params)):
    assert arr.sharding.spec == expected_spec(box.names), box.names
    assert arr.sharding.mesh.shape == mesh.shape
  # the student state is donated, the reference and the source params are not
  assert state.params["embedding"].is_deleted()
  assert not ref_params["embedding"].is_deleted() and not p["embedding"].is_deleted()
  assert ref_params["embedding"].sharding == sh.reference["embedding"]


def test_param_and_optimizer_shardings_follow_rules():
  mesh = mesh_of((2, 2, 2))
  sh = sharded.train_shardings(MODEL, make_optimizer(OPTIM), mesh, RULES)
  specs = jax.tree.map(lambda s: s.spec, sh.params)
  assert specs["embedding"] == P("tensor", "fsdp")
  assert specs["layers"]["attn"]["q_kernel"] == P(None, "fsdp", "tensor")
  assert specs["layers"]["attn"]["o_kernel"] == P(None, "tensor", None, "fsdp")
  assert specs["layers"]["mlp"]["down_kernel"] == P(None, "tensor", "fsdp")
  assert specs["layers"]["input_norm"]["scale"] == P()
  assert specs["final_norm"]["scale"] == P()
  # optimiser moments mirror the params; counters are replicated
  adam = sh.state.opt_state[1][0]
  assert jax.tree.map(lambda s: s.spec, adam.mu) == specs
  assert jax.tree.map(lambda s: s.spec, adam.nu) == specs
  assert adam.count.spec == P()
  assert sh.state.step.spec == P()
  assert sh.batch.spec == P(None, ("data", "fsdp"))
  # created straight into those shardings; shards are the expected size
  state = sharded.init_train_state(MODEL, make_optimizer(OPTIM), sh, jax.random.key(0))
  emb = state.params["embedding"]
  assert emb.sharding == sh.params["embedding"]
  assert {s.data.shape for s in emb.addressable_shards} == {(MODEL.vocab_size // 2,
                                                            MODEL.hidden_size // 2)}
  assert state.opt_state[1][0].mu["embedding"].sharding == sh.params["embedding"]
  # and the same values as the unsharded init (partitionable threefry; ulp-level float
  # differences from a different fusion of the normal transform)
  want = init_params(MODEL, jax.random.key(0))
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-9)


def test_restore_into_shardings(tmp_path):
  from t3d_jax.checkpoint import save_model_dir
  from t3d_jax.convert import load_params_sharded
  params = init_params(MODEL, jax.random.key(3))
  save_model_dir(tmp_path / "m", jax.device_get(params), MODEL)
  mesh = mesh_of((2, 2, 2))
  psh = sharding.param_shardings(MODEL, mesh, RULES)
  got, cfg = load_params_sharded(tmp_path / "m", mesh, RULES)
  assert cfg == MODEL
  for a, b, s in zip(jax.tree.leaves(got), jax.tree.leaves(params), jax.tree.leaves(psh)):
    assert a.sharding == s
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  half, cfg16 = load_params_sharded(tmp_path / "m", mesh, RULES, param_dtype="bfloat16")
  assert cfg16 == MODEL.replace(param_dtype="bfloat16")
  for a, b, s in zip(jax.tree.leaves(half), jax.tree.leaves(params), jax.tree.leaves(psh)):
    assert a.sharding == s and a.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b.astype(jnp.bfloat16)))


def test_hf_params_load_into_shardings(tmp_path):
  from hf_models import make_qwen3
  from t3d_jax.convert.hf import load_hf_params
  make_qwen3(tmp_path / "hf", tied=True)
  want, cfg, _ = load_hf_params(tmp_path / "hf")
  mesh = mesh_of((2, 2, 2))
  from t3d_jax.convert import load_params_sharded
  got, cfg2 = load_params_sharded(tmp_path / "hf", mesh, RULES)
  assert cfg2 == cfg
  psh = sharding.param_shardings(cfg, mesh, RULES)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b, s in zip(jax.tree.leaves(got), jax.tree.leaves(want), jax.tree.leaves(psh)):
    assert a.sharding == s
    np.testing.assert_array_equal(np.asarray(a), b)


def test_global_batch_and_local_rows():
  mesh = mesh_of((2, 2, 2))
  sh = sharded.train_shardings(MODEL, sgd_like(), mesh, RULES)
  assert sharding.local_rows(8, sh.batch) == slice(0, 8)  # one process owns every row
  b = global_batch()
  g = sharding.make_global_batch(b, sh.batch)
  assert g["ids"].shape == b["ids"].shape and g["ids"].sharding == sh.batch
  np.testing.assert_array_equal(np.asarray(g["ids"]), b["ids"])
  # M=8 over data x fsdp = 4: each device holds 2 rows
  assert {s.data.shape[1] for s in g["ids"].addressable_shards} == {2}


def test_config_rules_are_the_default_rules():
  c = base_config()
  assert tuple(c.mesh.rules) == sharding.DEFAULT_RULES
  mesh = sharding.mesh_from_config(c)
  assert dict(mesh.shape) == {"data": 8, "fsdp": 1, "tensor": 1}
  assert mesh.axis_types == (jax.sharding.AxisType.Auto,) * 3


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("shape,match", [
    (dict(data=3), r"product 3 does not equal the device count 8"),
    (dict(data=-1, fsdp=3), r"8 devices are not divisible by the fixed axes' product 3"),
    (dict(data=-1, fsdp=-1), r"at most one axis may be -1"),
    (dict(data=2, fsdp=2, tensor=4), r"product 16 does not equal the device count 8"),
    (dict(data=0, fsdp=-1), r"sizes must be positive"),
    (dict(model=2), r"unknown axis 'model'"),
])
def test_bad_mesh(shape, match):
  with pytest.raises(InputError, match=match):
    sharding.make_mesh(shape)


def test_bad_rules():
  mesh = mesh_of((2, 2, 2))
  tx = sgd_like()
  with pytest.raises(InputError, match=r"'embed' -> mesh axis 'model', but the mesh has axes "
                                       r"data, fsdp, tensor"):
    sharded.train_shardings(MODEL, tx, mesh, (("embed", "model"),))
  with pytest.raises(InputError, match=r"unknown logical axis 'embd'"):
    sharded.train_shardings(MODEL, tx, mesh, (("embd", "fsdp"),))
  with pytest.raises(InputError, match=r"'heads' has two rules"):
    sharded.train_shardings(MODEL, tx, mesh, (("heads", "tensor"), ("heads", None)))
  # kv_heads=2 cannot be split 8 ways
  with pytest.raises(InputError, match=r"param layers/attn/k_kernel \(2, 32, 2, 8\): dim 2 "
                                       r"\('kv_heads'\) has size 2, not divisible by mesh "
                                       r"axes tensor = 8"):
    sharded.train_shardings(MODEL, tx, mesh_of((1, 1, 8)), RULES)


def test_bad_batch():
  mesh = mesh_of((8, 1, 1))
  tx = sgd_like()
  sh = sharded.train_shardings(MODEL, tx, mesh, RULES)
  run = sharded.jit_train_step(
      make_train_step(MODEL, LOSS, OPTIM, mask_id=MASK, pad_id=PAD), sh)
  batch = jax.tree.map(lambda x: np.asarray(x)[None], make_batch(6))
  with pytest.raises(InputError, match=r"micro-batch size M=6 is not divisible by the "
                                       r"data-parallel size 8 \(data=8 x fsdp=1\)"):
    run(None, None, batch, jax.random.key(0))
  with pytest.raises(InputError, match=r"expected leading \[accumulation A, micro-batch M\]"):
    sharding.check_batch({"weight": np.ones(8)}, sh.batch)


def test_distributed_init_is_a_no_op_on_one_host(monkeypatch):
  for k in ("JAX_COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES",
            "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE"):
    monkeypatch.delenv(k, raising=False)
  assert distributed.multiprocess_env() is None
  assert distributed.initialize_from_config(base_config()) is False
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "w0,w1")
  assert distributed.multiprocess_env() == "TPU_WORKER_HOSTNAMES"
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "w0")
  assert distributed.multiprocess_env() is None
  assert distributed.is_main_process()


def test_sampler_with_rule_sharded_params_equals_single_device():
  """The sampler jitted over the training mesh: rows over 'data', params FSDP/tensor-
  sharded by the rules (the sampler's own tests cover replicated params)."""
  from t3d_jax.sampling import DecodeConfig, make_generate
  params = init_params(MODEL, jax.random.key(5))
  params["lm_head"] = params["lm_head"] * 30.0  # confident argmaxes: no near-ties
  rs = np.random.RandomState(0)
  lens = np.array([3, 9, 4, 12], np.int32)
  ids = np.zeros((4, 12), np.int32)
  for r, n in enumerate(lens):
    ids[r, :n] = rs.randint(1, MASK, n)
  dcfg = DecodeConfig(mask_id=MASK, block_size=4, denoising_steps=2, max_new_tokens=8,
                      strategy="low_confidence_dynamic")
  single = make_generate(MODEL, dcfg)(params, ids, lens, jax.random.key(0))
  mesh = mesh_of((2, 2, 2))
  psh = sharding.param_shardings(MODEL, mesh, RULES)
  run = make_generate(MODEL, dcfg, mesh, data_axis="data", param_sharding=psh)
  out = run(sharding.shard_tree(jax.device_get(params), psh), ids, lens, jax.random.key(0))
  assert out["ids"].sharding.spec[0] == "data"
  for k in single:
    np.testing.assert_array_equal(np.asarray(out[k]), np.asarray(single[k]), err_msg=k)
