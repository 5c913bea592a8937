"""The train state on a mesh: its shardings, its creation in place, the jitted step.

The state never exists on one host: its shapes come from ``jax.eval_shape``, its
shardings from the rules (:mod:`t3d_jax.sharding`), and it is created by a jit whose
``out_shardings`` are those (``init_train_state``) or built around params that were
loaded straight into their shardings (``create_train_state``;
:func:`t3d_jax.convert.load_params_sharded`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from t3d_jax.sharding import (Rules, batch_spec, check_batch, in_mesh, logical_names, make_rules,
                              mirror_params, named, param_specs)
from t3d_jax.train.trainer import TrainState


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
  from t3d_jax.models.family import of_config
  abstract = of_config(model_cfg).network.abstract_params(model_cfg)
  return jax.eval_shape(lambda p: TrainState.create(p, tx), nn.unbox(abstract))


def train_shardings(model_cfg, tx, mesh: Mesh, rules: Rules) -> TrainShardings:
  """Shardings of params (rules), optimiser state (mirrors params; scalars replicated),
  step (replicated), reference (as params) and batch."""
  from t3d_jax.models.family import of_config
  boxed = of_config(model_cfg).network.abstract_params(model_cfg)
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
  from t3d_jax.models.family import of_config
  init_params = of_config(model_cfg).network.init_params
  return jax.jit(lambda r: TrainState.create(init_params(model_cfg, r), tx),
                 out_shardings=sh.state.replace(tx=tx))(rng)


def create_train_state(params, tx, sh: TrainShardings):
  """A TrainState around (already sharded) params; the optimiser state is created in its
  shardings. ``params`` is not donated (callers often keep it as the reference)."""
  return jax.jit(lambda p: TrainState.create(p, tx), in_shardings=(sh.params,),
                 out_shardings=sh.state.replace(tx=tx))(params)


def jit_train_step(step: Callable, sh: TrainShardings) -> Callable:
  """``step(state, ref_params, batch, rng)`` jitted with explicit shardings; the state is
  donated, the reference is not. Returns a function that checks the batch shape first
  (one clear error instead of an XLA one) and then runs the compiled step."""
  # keyed by the state's static ``tx`` (part of its pytree structure and of the state's
  # shardings): what determines the executable besides the shapes jit keys on itself
  compiled: dict = {}

  def jitted(tx):
    if tx not in compiled:
      state_sh = sh.state.replace(tx=tx)
      compiled[tx] = jax.jit(
          step, in_shardings=(state_sh, sh.reference, sh.batch, sh.replicated),
          out_shardings=(state_sh, sh.replicated), donate_argnums=(0,))
    return compiled[tx]

  def run(state, ref_params, batch, rng):
    check_batch(batch, sh.batch)
    with in_mesh(sh.mesh):  # the attention kernel runs per shard on it
      return jitted(state.tx)(state, ref_params, batch, rng)
  run.jitted = jitted
  return run
