"""The generic trainer: optimiser config, schedule, clip, AdamW, train state, update step.

``make_train_step(loss_fn, optim)`` returns one pure, jitted-ready
``(state, ref_params, batch, rng) -> (state, metrics)``:

* gradient accumulation over micro-batches with ``lax.scan`` inside the step; examples
  are weighted equally across the whole global batch (``weight`` [A, M]; dropped /
  padding examples carry weight 0);
* optax chain: global-norm clip -> AdamW with linear warmup then cosine to
  ``min_lr_scale * lr`` (``min_lr_scale=0`` reproduces the released decay to 0);
* ``ref_params`` is a separate argument handed to the loss (T3D's frozen reference;
  None for pretraining): refreshing it swaps arrays of the same shapes, so nothing
  recompiles.

Batch leaves carry leading [accumulation A, micro-batch M] axes; ``weight`` is required.
The losses live with their method (:mod:`t3d_jax.distill.step`, :mod:`t3d_jax.train.pretrain`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from t3d_jax.config_keys import dataclass_from_config

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  lr: float = 1e-5
  warmup_steps: int = 20
  total_steps: int = 1000
  min_lr_scale: float = 0.1
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 0.01
  decay_norms_and_biases: bool = True   # the original decays every parameter
  clip_grad_norm: float = 1.0

  @classmethod
  def from_config(cls, c, **overrides) -> "OptimConfig":
    return dataclass_from_config(cls, c, **overrides)


def lr_schedule(o: OptimConfig) -> optax.Schedule:
  """Update k (0-based) gets lr*(k+1)/warmup during warmup (the first update is not at
  lr 0, unlike the released LambdaLR), then cosine from lr to min_lr_scale*lr."""
  warm = max(o.warmup_steps, 0)
  decay_steps = max(o.total_steps - warm, 1)

  def schedule(count):
    count = jnp.asarray(count, jnp.float32)
    w = o.lr * jnp.minimum(count + 1.0, float(max(warm, 1))) / max(warm, 1)
    frac = jnp.clip((count - warm) / decay_steps, 0.0, 1.0)
    floor = o.min_lr_scale * o.lr
    c = floor + (o.lr - floor) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
    return jnp.where(count < warm, w, c)
  return schedule


def _decay_mask(params):
  """True for matrices (kernels, embeddings); False for norm scales and biases."""
  def leaf(path, x):
    name = str(path[-1].key) if hasattr(path[-1], "key") else str(path[-1])
    return not (name == "scale" or name.endswith("_bias"))
  return jax.tree_util.tree_map_with_path(leaf, params)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  """optax.clip_by_global_norm as one scalar factor, min(1, max_norm / norm), times each
  gradient. optax selects per element between t and t / norm * max_norm, which XLA:CPU
  materialises as a clipped copy of every gradient before Adam reads it; the scalar
  form fuses into Adam's moment updates (same values up to float rounding; same empty
  state, so checkpoints are unchanged)."""
  def update_fn(updates, state, params=None):
    del params
    norm = optax.tree.norm(updates)
    factor = jnp.where(norm < max_norm, 1.0, max_norm / norm)
    return jax.tree.map(lambda t: t * factor.astype(t.dtype), updates), state
  return optax.GradientTransformation(optax.init_empty_state, update_fn)


def make_optimizer(o: OptimConfig) -> optax.GradientTransformation:
  mask = None if o.decay_norms_and_biases else _decay_mask
  return optax.chain(
      clip_by_global_norm(o.clip_grad_norm) if o.clip_grad_norm > 0 else optax.identity(),
      optax.adamw(lr_schedule(o), b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                  mask=mask))


class TrainState(flax.struct.PyTreeNode):
  step: Array
  params: Any
  opt_state: Any
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  @classmethod
  def create(cls, params, tx: optax.GradientTransformation) -> "TrainState":
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), tx=tx)


def make_train_step(loss_fn: Callable, optim: OptimConfig) -> Callable:
  """Returns the pure step ``(state, ref_params, batch, rng) -> (state, metrics)``.

  ``loss_fn(params, ref_params, micro_batch, rng) -> (loss, metrics)`` is one
  micro-batch's weighted-mean loss (e.g. :func:`t3d_jax.distill.step.micro_loss`)."""
  schedule = lr_schedule(optim)

  def accumulate(params, ref_params, batch: dict, rng: Array):
    """Gradients and metrics of the global batch, accumulated over its micro-batches."""
    total_w = jnp.maximum(batch["weight"].astype(jnp.float32).sum(), 1e-12)

    def scaled(p, mb, key):
      loss, metrics = loss_fn(p, ref_params, mb, key)
      share = mb["weight"].astype(jnp.float32).sum() / total_w  # micro mean -> global mean
      return loss * share, jax.tree.map(lambda m: m * share, metrics)

    grad_fn = jax.grad(scaled, has_aux=True)

    def body(acc, xs):
      g, m = grad_fn(params, *xs)
      return jax.tree.map(jnp.add, acc, (g, m)), None

    keys = jax.random.split(rng, batch["weight"].shape[0])
    first = jax.tree.map(lambda x: x[0], batch)
    zero = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, params, first, keys[0]))
    (grads, metrics), _ = jax.lax.scan(body, zero, (batch, keys))
    return grads, dict(metrics, examples=total_w)

  def step(state: TrainState, ref_params, batch: dict, rng: Array):
    grads, metrics = accumulate(state.params, ref_params, batch,
                                jax.random.fold_in(rng, state.step))
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, grad_norm=optax.global_norm(grads), lr=schedule(state.step))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  step.accumulate = accumulate
  return step


def copy_tree(tree):
  """A fresh copy (new buffers): the reference must not alias the donated student."""
  return jax.tree.map(jnp.copy, tree)
