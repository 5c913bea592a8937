"""Python API for notebooks: the CLI's code paths, called from Python.

    from t3d_jax import api
    base = api.load("runs/mytask/model", config="configs/own_task.py")
    print(base.generate("k3 k7", tokens_per_forward=4)[0].text)
    traj = api.rollout(base, "runs/mytask/data/train.jsonl", workdir="runs/nb")
    student = api.distill(base, traj, workdir="runs/nb", **{"distill.max_steps": 100})
    report = api.evaluate({"base": base, "t3d": student}, "runs/mytask/data/test.jsonl",
                          grader="exact", tokens_per_forward=(1, 2, 4))
    print(report.table)

``config`` (a configs/*.py path, a ConfigDict or None for the defaults) supplies what the
CLI would read from it: the prompt template, the decode section, the recipe. Keyword
overrides are dotted config keys (``**{"distill.max_steps": 100}``, or
``distill__max_steps=100``). ``rollout``, ``distill`` and ``evaluate`` run the same
function as ``python -m t3d_jax.main`` (workdir lock, guards, resume, the same files) and
return what the stage produced in memory (the student's params, the eval summaries);
``generate`` decodes with the sampler rollout and eval use.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Union

import jax

from t3d_jax import convert
from t3d_jax.config_base import base_config, config_module
from t3d_jax.data import tokenizer as tok_lib
from t3d_jax.errors import InputError
from t3d_jax.models.numerics import Numerics
from t3d_jax.sampling import DecodeConfig, Decoder
from t3d_jax.config_keys import apply_overrides
from t3d_jax.tasks import grader_for

ConfigLike = Union[str, os.PathLike, Any, None]


def make_config(config: ConfigLike = None, overrides: Mapping | None = None):
  """A config as the CLI builds it: a configs/*.py path (its ``get_config()``), a
  ConfigDict (copied) or None (``base_config()``), with dotted-key ``overrides``."""
  if config is None:
    c = base_config()
  elif isinstance(config, (str, os.PathLike)):
    if not os.path.isfile(config):
      raise InputError(f"config {os.fspath(config)}: no such file")
    c = config_module(config).get_config()
  else:
    c = config.copy_and_resolve_references()
  apply_overrides(c, dict(overrides or {}))
  return c


@dataclasses.dataclass(frozen=True)
class Generation:
  """One decoded sequence: ``text`` without special tokens, ``full_text`` with them,
  ``ids`` the response tokens, ``step_map`` the 1-based decoding step at which each
  token was revealed, ``nfe`` the model forwards spent on it."""
  prompt: str
  text: str
  full_text: str
  ids: list
  step_map: list
  nfe: int


@dataclasses.dataclass
class Model:
  """A loaded model dir or HF dir with the config it decodes and trains with."""
  name: str
  path: str
  params: Any
  cfg: Any                # SDARConfig
  tokenizer: Any
  ids: Any                # tokenizer special ids
  config: Any             # ConfigDict
  _decoder: Any = dataclasses.field(default=None, init=False, repr=False)

  def decoder(self, tokens_per_forward: int = 1, **knobs) -> Decoder:
    """The config's decode section as a :class:`Decoder` (its batching and
    ``decode.data_parallel`` mesh) at :meth:`decode_config`; every decoder of this model
    shares one set of compilations."""
    dcfg = self.decode_config(tokens_per_forward, **knobs)
    if self._decoder is None:
      self._decoder = Decoder.from_config(self.config.decode, self.ids, self.cfg)
    base = self._decoder
    return Decoder(self.cfg, dcfg, base.batching, base.mesh, base.executables)

  def decode_config(self, tokens_per_forward: int = 1, **knobs) -> DecodeConfig:
    """The config's decode section at ``tokens_per_forward`` (block_size / tokens per
    forward denoising steps), with ``knobs`` (strategy, threshold, temperature, top_p,
    top_k, entropy_bound, max_new_tokens) replacing its values where not None."""
    b = self.config.decode.block_size
    if not isinstance(tokens_per_forward, int) or tokens_per_forward < 1 \
        or b % tokens_per_forward:
      raise InputError(f"tokens_per_forward={tokens_per_forward!r} does not divide "
                       f"decode.block_size={b}")
    given = {k: v for k, v in knobs.items() if v is not None}
    return DecodeConfig.from_config(self.config.decode, self.ids,
                                    denoising_steps=b // tokens_per_forward, **given)

  def prompts(self, questions: Sequence[str], dcfg: DecodeConfig | None = None
              ) -> tuple[list[str], list[list[int]]]:
    """Prompt strings and ids of ``questions`` with the config's prompt template (as
    rollout and eval build them; with ``dcfg``, checked against its max_length)."""
    task = grader_for(self.config)
    rows = [dict(index=i, question=q, prefix=task.prefix(q)) for i, q in enumerate(questions)]
    return tok_lib.build_prompts(self.tokenizer, rows, self.config.prompt_template,
                                 "questions", dcfg, task.user_message)

  def generate(self, questions_or_ids: Union[str, Sequence[str], Sequence[Sequence[int]]],
               *, tokens_per_forward: int = 1, strategy: str | None = None,
               threshold: float | None = None, temperature: float | None = None,
               top_p: float | None = None, top_k: int | None = None,
               max_new_tokens: int | None = None, seed: int = 0,
               batch_size: int | None = None) -> list[Generation]:
    """Decodes one question, several, or prompt token ids (used as they are). Unset
    knobs keep the config's decode values; temperature 0 is greedy (the seed then does
    not matter). Batches hold at most ``batch_size`` (default: the config's
    decode.batch_size, or fewer when fewer prompts are given)."""
    items = [questions_or_ids] if isinstance(questions_or_ids, str) else list(questions_or_ids)
    if not items:
      return []
    decoder = self.decoder(tokens_per_forward, strategy=strategy, threshold=threshold,
                           temperature=temperature, top_p=top_p, top_k=top_k,
                           max_new_tokens=max_new_tokens)
    dcfg = decoder.dcfg
    if all(isinstance(x, str) for x in items):
      texts, prompt_ids = self.prompts(items, dcfg)
    elif all(not isinstance(x, str) and all(isinstance(t, int) for t in x) for x in items):
      prompt_ids = [list(map(int, x)) for x in items]
      texts = [self.tokenizer.decode(x, skip_special_tokens=False) for x in prompt_ids]
    else:
      raise InputError("generate: give a question string, a list of them, or a list of "
                       "token-id lists")
    rows = batch_size or decoder.batching.batch_size
    if decoder.mesh is None:  # a batch split over devices keeps its size (copies fill it)
      rows = min(rows, len(prompt_ids))
    results = decoder.decode(self.params, prompt_ids, jax.random.key(seed), batch_size=rows)
    decode = self.tokenizer.decode
    return [Generation(prompt=t, text=decode(r["response_ids"], skip_special_tokens=True),
                       full_text=decode(r["response_ids"], skip_special_tokens=False),
                       ids=list(r["response_ids"]), step_map=list(r["step_map"]),
                       nfe=int(r["nfe"])) for t, r in zip(texts, results)]


def load(path, *, config: ConfigLike = None, name: str = "", **overrides) -> Model:
  """A model dir (convert / pretrain / distill output) or an HF dir, with ``config``;
  the config's tokenizer_dir and model.param_dtype / dtype / attention apply."""
  c = make_config(config, overrides)
  m = convert.load_model(path, name or Path(path).name or "model", c.tokenizer_dir,
                         Numerics.of(c.model))
  return Model(m.name, m.path, m.params, m.cfg, m.tokenizer, m.ids, c)


def _run(model: Model, mode: str, workdir, overrides: Mapping, **keys):
  """Runs ``mode`` as the CLI does, on the model's config with ``keys`` and ``overrides``:
  (the config it ran, the stage's Result)."""
  from t3d_jax import main
  c = model.config.copy_and_resolve_references()
  c.mode, c.workdir, c.model_dir = mode, os.fspath(workdir), model.path
  apply_overrides(c, keys)
  apply_overrides(c, dict(overrides))
  return c, main.run(c)


def rollout(model: Model, data, workdir, **overrides) -> Path:
  """Full-step trajectories of ``model`` on a question/answer JSONL (or a shipped dataset
  name) -> the trajectories JSONL (``<workdir>/trajectories.jsonl`` by default)."""
  _, result = _run(model, "rollout", workdir, overrides, **{"rollout.data": os.fspath(data)})
  return result.outputs[0]


def distill(model: Model, trajectories, workdir, *, name: str = "student",
            **overrides) -> Model:
  """T3D on ``trajectories`` from ``model`` as distill run ``name`` of ``workdir``
  (resumes where it stopped) -> the student (its params as trained, in memory; the same
  as the model dir the run wrote), with the same config."""
  c, result = _run(model, "distill", workdir, overrides,
                   **{"distill.data": os.fspath(trajectories), "distill.name": name})
  path = result.outputs[0]
  cfg = Numerics.of(c.model).apply(convert.model_config(path), train=False)
  return Model(name, os.fspath(path), jax.device_get(result.value), cfg, model.tokenizer, model.ids,
               model.config)


@dataclasses.dataclass(frozen=True)
class Report:
  """What eval writes: the CLI's table, each (model, setting) summary, AUP per curve."""
  table: str
  results: list
  aup: dict
  output_dir: Path

  def __str__(self) -> str:
    return self.table


def _grader_name(grader) -> str:
  if grader is None or isinstance(grader, str):
    return grader
  name = f"{getattr(grader, '__module__', '')}:{getattr(grader, '__qualname__', '')}"
  if not callable(grader) or "<" in name or name.startswith(":"):
    raise InputError(f"evaluate: grader {grader!r} must be a task name or a module-level "
                     "function (question, answer, response) -> bool | (bool, reason)")
  return name


def evaluate(models: Union[Mapping[str, Union[Model, str]], Sequence[Model]], data, *,
             grader: Union[str, Callable, None] = None, tokens_per_forward=(1, 2, 4),
             workdir=None, **overrides) -> Report:
  """Each model at each tokens-per-forward value on a question/answer JSONL, graded by
  ``grader`` (a task name, or a module-level function; default: the config's
  task.name), as eval mode does; outputs under ``<workdir>/eval`` (default workdir: a
  new temporary directory). Models: {name: Model or path} or a list of Models (their
  names). The config is the first Model's (or the defaults)."""
  entries = (list(models.items()) if isinstance(models, Mapping)
             else [(m.name, m) for m in models])
  if not entries:
    raise InputError("evaluate: no models given")
  first = next((m for _, m in entries if isinstance(m, Model)), None)
  c = make_config(first.config if first else None)
  c.mode = "eval"
  c.workdir = os.fspath(workdir) if workdir else tempfile.mkdtemp(prefix="t3d_eval_")
  c.eval.models = tuple(f"{n}={m.path if isinstance(m, Model) else os.fspath(m)}"
                        for n, m in entries)
  c.eval.data = os.fspath(data)
  c.eval.tokens_per_forward = tuple(tokens_per_forward)
  if grader is not None:
    c.task.name = _grader_name(grader)
  apply_overrides(c, dict(overrides))
  from t3d_jax import main
  result = main.run(c)
  s = result.summary
  return Report(s["table"], s["results"], s["aup"], result.outputs[0])
