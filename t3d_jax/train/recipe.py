"""The one training recipe the pretrain and distill modes share.

schedule -> optimiser -> mesh -> params (loaded straight into their shardings, or
created there) -> train state -> jitted step -> resumable loop (:mod:`t3d_jax.train.loop`)
-> the final params gathered to the host. A mode supplies only what differs: its
examples (``make_batch``), its loss (``loss_fn``), what a resumed run must share
(``settings``), whether a frozen reference rides along, and what it writes at the end.

Every process builds the same global batch order (``epoch_order(n, seed, epoch)``) and
feeds only its own micro-batch rows (``make_array_from_process_local_data``).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Optional

import jax

from t3d_jax import distributed, sharding
from t3d_jax.convert import load_params_sharded
from t3d_jax.data.loader import epoch_order
from t3d_jax.errors import InputError
from t3d_jax.config_keys import stage_seed
from t3d_jax.models.sdar import SDARConfig
from t3d_jax.train import loop, sharded
from t3d_jax.train.trainer import OptimConfig, copy_tree, make_optimizer, make_train_step


# keys of a training section that do not change what the run computes
LOGGING_KEYS = ("log_every", "checkpoint_every", "keep_checkpoints", "async_checkpoint")


def result_keys(section, skip=()) -> dict:
  """A config section as a dict, without its logging / checkpointing keys and ``skip``
  (keys whose effect a digest already covers, or output paths)."""
  return {k: v for k, v in section.to_dict().items() if k not in LOGGING_KEYS + tuple(skip)}


@dataclasses.dataclass(frozen=True)
class Start:
  """Where the params come from: ``path`` (a model dir or HF dir, loaded sharded) or
  random weights of ``model`` (then ``path`` is empty)."""
  model: SDARConfig
  path: str = ""


@dataclasses.dataclass
class Result:
  params: Any            # host numpy tree of the final params (on every process)
  model: SDARConfig
  total: int             # updates of the schedule
  updates: int = 0       # updates the params had (< total when it stopped early)


def run(config, *, name: str, section, optim_section, out: Path, n: int, data: str,
        start: Start, loss_fn: Callable[[SDARConfig], Callable],
        make_batch: Callable[[Any, int], tuple[dict, dict]], settings: dict,
        reference: bool, round_interval: int = 0, on_data: Optional[Callable] = None,
        data_every: int = 0, evaluate: Optional[Callable] = None, eval_every: int = 0,
        stop_when: Optional[Callable] = None, defaults: Optional[dict] = None) -> Result:
  """Trains and returns the final params.

  ``settings`` (plus the schedule length) are recorded in every checkpoint; a resumed
  run must match them: everything that changes the result (the start model's and the
  data's digests, the mode's section without its logging keys, ...), nothing that does
  not (mesh, process count, logging). ``section``: the mode's config section (global_batch,
  micro_batch, num_epochs, max_steps, log/checkpoint keys); ``n`` examples named ``data``
  in messages;
  ``loss_fn(model) -> (params, ref, micro_batch, rng) -> (loss, metrics)``;
  ``make_batch(indices, step) -> (numpy batch [A, M, ...], scalars to log)``;
  ``reference``: keep a frozen copy of the start params, refreshed every
  ``round_interval`` updates (0: never); ``on_data(done, state)``: new training data
  every ``data_every`` updates; ``evaluate(done, state) -> figures`` every
  ``eval_every`` updates, stopping early when ``stop_when(figures)``
  (:func:`t3d_jax.train.loop.run`)."""
  per_epoch, total = loop.schedule(n, section, name, data)
  seed = stage_seed(config, name)
  optim = OptimConfig.from_config(optim_section, total_steps=total)
  tx = make_optimizer(optim)
  mesh = sharding.mesh_from_config(config)
  rules = config.mesh.rules
  model = start.model
  sh = sharded.train_shardings(model, tx, mesh, rules)
  ways, how = sharding.data_parallel(sh.batch)
  if section.micro_batch % ways:
    raise InputError(f"config {name}.micro_batch={section.micro_batch} is not divisible by "
                     f"the data-parallel size {ways} of the mesh ({how}); use a multiple "
                     f"of {ways} or a smaller data/fsdp mesh axis")
  if start.path:
    params, _ = load_params_sharded(start.path, mesh, rules, model.param_dtype)
    state = sharded.create_train_state(params, tx, sh)   # copies: params stay as reference
    ref = params if reference else None
    del params
  else:
    state = sharded.init_train_state(model, tx, sh, jax.random.key(seed))
    ref = jax.jit(copy_tree, out_shardings=sh.reference)(state.params) if reference else None
  if not reference:
    sh = dataclasses.replace(sh, reference=None)
  step_fn = sharded.jit_train_step(make_train_step(loss_fn(model), optim), sh)
  rows = sharding.local_rows(section.micro_batch, sh.batch)  # this process's rows

  def batch_fn(step):
    epoch, k = divmod(step, per_epoch)
    idx = epoch_order(n, seed, epoch)[k * section.global_batch:
                                             (k + 1) * section.global_batch]
    batch, info = make_batch(idx, step)
    batch = sharding.make_global_batch({key: x[:, rows] for key, x in batch.items()},
                                       sh.batch, global_rows=section.micro_batch)
    return batch, dict(epoch=epoch, **info)

  lc = loop.LoopConfig(name=name, out=out, total=total, log_every=section.log_every,
                       checkpoint_every=section.checkpoint_every,
                       keep_checkpoints=section.keep_checkpoints,
                       async_checkpoint=section.async_checkpoint,
                       round_interval=round_interval if reference else 0,
                       data_every=data_every, eval_every=eval_every,
                       overwrite=config.overwrite)
  refresh: Optional[Callable] = None
  if reference:
    refresh = jax.jit(copy_tree, out_shardings=sh.reference)  # new buffers, never donated
  state = loop.run(lc, state=state, reference=ref, step_fn=step_fn, batch_fn=batch_fn,
                   settings=dict(settings, total=total), rng=jax.random.key(seed),
                   refresh=refresh, on_data=on_data, evaluate=evaluate, stop_when=stop_when,
                   defaults=defaults,
                   extra=lambda done: dict(epoch=done // per_epoch,
                                           index_in_epoch=(done % per_epoch)
                                           * section.global_batch))
  final = distributed.gather_to_host(state.params)  # collective: every process takes part
  return Result(final, model, total, int(state.step))
