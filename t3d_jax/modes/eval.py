"""eval mode: models x decoding settings -> accuracy, length, NFE, TPF, tokens/s, AUP.

    python -m t3d_jax.main --config configs/eval.py --config.workdir=/tmp/run \\
        --config.eval.models='("base=/tmp/run/model", "t3d=distill:student")' \\
        [--config.eval.data=gsm8k_test|math500|path.jsonl] [--config.eval.limit=N]

Settings: every strategy of ``eval.strategies`` x every ``eval.tokens_per_forward`` value
t (block ``decode.block_size`` = b, ``b / t`` denoising steps per block), plus one
``low_confidence_dynamic`` setting per ``eval.thresholds`` value (at most b steps per
block; the threshold decides how many tokens each reveals: a curve of its own,
``<model>/thresholds``, over one compiled decoder: the threshold is a traced value); the other
decoding knobs (temperature 0.1 by default, top-k/p, threshold, max_new_tokens, ...) come
from ``config.decode``. Each model decodes the same prompts (chat template + math
instruction, or ``prompt_template``) with the same keys (sample j of question i:
``fold_in(fold_in(key(seed), i), j)``, whatever the batch), and each
response is graded (last \\boxed{}, GSM8K ``####`` references, math_verify).

Outputs under <workdir>/eval (or ``eval.output_dir``):

* ``samples/<model>/<setting>.jsonl``: one row per question (index, question, answer,
  prompt, full_output, step_map, response_length, nfe, prediction, reference, correct,
  reason), and ``samples/<model>/<setting>.summary.json``, its metrics; a rerun with the
  same settings reuses a finished (model, setting) instead of decoding it again;
* ``summary.json``: all metrics (accuracy with its 95 % Wilson interval ``accuracy_ci95``),
  AUP per curve, the decoding settings;
* ``accuracy_vs_tpf.png``: accuracy against measured TPF, one line per model (per model
  and strategy when several strategies are evaluated), 95 % error bars, AUP in the legend;
* ``tb/``: TensorBoard scalars ``<curve>/<metric>`` at step = nominal tokens per forward
  (the threshold sweep: 100 x threshold), and ``<curve>/aup``.

tokens/s = generated tokens / seconds of the decoding calls (each batch shape compiled
ahead of time, so compilation is excluded; it is reported as ``compile_s``).

With several processes each one loads the whole model and decodes its share of the
batches (t3d_jax.sampling.batched.decode); the results are all-gathered, and
only process 0 writes, so the files equal a single process's (tokens/s then counts all
processes' tokens over the slowest one's decoding time). Process 0 decides which
finished (model, setting) pairs are reused and tells the others.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Optional
from pathlib import Path

import jax
from absl import logging
from tqdm import tqdm

from t3d_jax import checkpoint
from t3d_jax.convert import load_model
from t3d_jax.data import tokenizer as tok_lib
from t3d_jax.data.datasets import load_rows
from t3d_jax.data.jsonl import count_rows, write_json_atomic, write_jsonl_atomic
from t3d_jax.distributed import broadcast_from_main, is_main_process
from t3d_jax.errors import InputError, Interrupted
from t3d_jax.models.numerics import Numerics
from t3d_jax.evaluation.compare import aggregate, gain_lines, group_of
from t3d_jax.evaluation.metrics import aup, pass_at_ks, summarize
from t3d_jax.evaluation.plots import plot_accuracy_vs_tpf
from t3d_jax.sampling import Batching, Decoder, DecodeStats, batched
from t3d_jax.sampling.decoder import decode_mesh
from t3d_jax.config_keys import stage_seed
from t3d_jax.digests import content_digest, fingerprint
from t3d_jax.modes.stage import Result, Stage, workdir_data
from t3d_jax.tasks import ERROR_PREFIX, grader_for
from t3d_jax.train.preemption import StopRequests
from t3d_jax.workdir import Workdir

SHORT = {"sequential": "seq", "low_confidence_static": "static",
         "low_confidence_dynamic": "dynamic", "entropy_bounded": "entropy"}
METRICS = ("accuracy", "mean_response_length", "nfe_mean", "tpf", "tokens_per_s")


@dataclasses.dataclass(frozen=True)
class Setting:
  strategy: str
  tokens_per_forward: int
  block_size: int
  threshold: Optional[float] = None  # a point of the eval.thresholds sweep

  @classmethod
  def of(cls, summary: dict) -> "Setting":
    return cls(summary["strategy"], summary["tokens_per_forward"], summary["block_size"],
               summary.get("threshold"))

  @property
  def steps(self) -> int:
    return self.block_size // self.tokens_per_forward

  @property
  def name(self) -> str:
    name = (f"{SHORT.get(self.strategy, self.strategy)}_b{self.block_size}"
            f"_tpf{self.tokens_per_forward}")
    return name if self.threshold is None else f"{name}_th{self.threshold:g}"


def parse_models(config) -> list[tuple[str, str]]:
  """``eval.models`` as (name, path) (t3d_jax.workdir.Workdir.models), each checked."""
  out, seen = [], set()
  for name, path in Workdir(config).models():
    if not name or not path or "/" in name:
      raise InputError(f"config eval.models entry {name}={path!r}: expected 'name=path'")
    if name in seen:
      raise InputError(f"config eval.models: model name {name!r} given twice")
    if not Path(path).exists():
      raise InputError(f"config eval.models: model {name!r}: {path} does not exist")
    seen.add(name)
    out.append((name, path))
  return out


def parse_settings(config) -> list[Setting]:
  b = config.decode.block_size
  tpfs, strategies = list(config.eval.tokens_per_forward), list(config.eval.strategies)
  if not tpfs or not strategies:
    raise InputError("config eval.tokens_per_forward and eval.strategies must be non-empty")
  for t in tpfs:
    if not isinstance(t, int) or t < 1 or b % t:
      raise InputError(f"config eval.tokens_per_forward: {t!r} does not divide "
                       f"decode.block_size={b}")
  sweep = []
  for h in config.eval.thresholds:
    if not isinstance(h, (int, float)) or isinstance(h, bool):
      raise InputError(f"config eval.thresholds: {h!r} is not a number")
    sweep.append(Setting("low_confidence_dynamic", 1, b, float(h)))
  return [Setting(s, t, b) for s in strategies for t in tpfs] + sweep


def _family(setting: Setting) -> str:
  return "thresholds" if setting.threshold is not None else \
      SHORT.get(setting.strategy, setting.strategy)


def _curve(model: str, setting: Setting, multi: bool) -> str:
  return f"{model}/{_family(setting)}" if multi else model


def _evaluate(model, setting, decoder, prompts, prompt_ids, questions, config, rng, bar,
              grader, main: bool = True) -> tuple:
  """Decodes (every process takes part) and, on the main process only, grades: (rows,
  summary), or (None, None) on the other processes."""
  dcfg = decoder.dcfg
  base = bar.n

  def progress(k):
    bar.update(base + k - bar.n)

  stats = DecodeStats()  # compilation kept out of the timing
  ns = config.eval.num_samples  # questions holds each question ns times in a row
  results = decoder.decode(model.params, prompt_ids, rng, progress=progress, stats=stats,
                           sample_ids=[(i // ns, i % ns) for i in range(len(prompt_ids))])
  if not main:
    return None, None
  t0 = time.perf_counter()
  rows = []
  for q, prompt, res in zip(questions, prompts, results):
    output = model.tokenizer.decode(res["response_ids"], skip_special_tokens=True)
    g = grader(q["question"], q["answer"], output, timeout_s=config.eval.grade_timeout_s)
    rows.append(dict(index=q["index"], question=q["question"], answer=q["answer"],
                     prompt=prompt, output=output,
                     full_output=model.tokenizer.decode(res["response_ids"],
                                                        skip_special_tokens=False),
                     response_ids=list(res["response_ids"]), step_map=res["step_map"],
                     response_length=res["length"], nfe=res["nfe"], prediction=g.prediction,
                     reference=g.reference, correct=bool(g.correct), reason=g.reason,
                     **({"sample": q["sample"]} if "sample" in q else {})))
  summary = summarize(rows, wall_time_s=stats.decode_s)
  if config.eval.num_samples > 1:  # accuracy is then the mean pass@1 estimate
    summary.update(num_samples=config.eval.num_samples,
                   **pass_at_ks(rows, config.eval.num_samples))
  summary.update(model=model.name, model_path=model.path, setting=setting.name,
                 strategy=setting.strategy, tokens_per_forward=setting.tokens_per_forward,
                 block_size=setting.block_size, denoising_steps=setting.steps,
                 **({} if setting.threshold is None else {"threshold": setting.threshold}),
                 temperature=dcfg.temperature, compile_s=stats.compile_s,
                 grade_s=time.perf_counter() - t0, grader=grader.name,
                 grader_errors=sum(r["reason"].startswith(ERROR_PREFIX) for r in rows))
  if summary["grader_errors"]:
    first = next(r for r in rows if r["reason"].startswith(ERROR_PREFIX))
    print(f"[eval] {model.name} {setting.name}: the grader raised on "
          f"{summary['grader_errors']} of {len(rows)} rows (graded wrong; first: question "
          f"{first['index'] + 1}: {first['reason'][len(ERROR_PREFIX):]})", file=sys.stderr,
          flush=True)
  return rows, summary


def _fingerprint(config, model_digest: str, data_digest: str, dcfg) -> str:
  """What a reused (model, setting) result must share with this run: the weights, the
  prompts and answers, the grader and every decoding setting."""
  d = config.decode
  extra = {"num_samples": config.eval.num_samples} if config.eval.num_samples > 1 else {}
  extra.update(batched.key_record(dcfg))  # older sampled results are not reused
  return fingerprint(dict(model=model_digest, data=data_digest, task=config.task.name,
                          grade_timeout_s=config.eval.grade_timeout_s, **extra,
                          decode=dataclasses.asdict(dcfg), batch_size=d.batch_size,
                          width_multiple=d.width_multiple,
                          seed=stage_seed(config, "eval")))


def _finished(summary_path: Path, samples_path: Path, n: int, fp: str):
  """The summary of a (model, setting) finished before with the same fingerprint, or None."""
  if summary_path.is_file() and count_rows(samples_path) == n:
    cached = json.loads(summary_path.read_text())
    if cached.get("fingerprint") == fp:
      return cached
  return None


def format_table(results: list[dict], aups: dict, multi: bool) -> str:
  ks = sorted({k for r in results for k in r if k.startswith("pass@") and k != "pass@1"},
              key=lambda k: int(k[5:]))  # num_samples > 1
  w = max([14] + [len(r["model"]) + 2 for r in results])
  head = (f"{'model':<{w}}{'setting':<22}{'acc %':>7}{'95% CI':>14}{'len':>8}{'NFE':>8}"
          f"{'TPF':>7}{'tok/s':>9}{'AUP':>8}" + "".join(f"{k:>9}" for k in ks))
  lines = [head, "-" * len(head)]
  for r in results:
    curve = _curve(r["model"], Setting.of(r), multi)
    lo, hi = r.get("accuracy_ci95", (float("nan"), float("nan")))
    ci = f"{100 * lo:.1f}-{100 * hi:.1f}"
    lines.append(f"{r['model']:<{w}}{r['setting']:<22}{100 * r['accuracy']:>7.1f}{ci:>14}"
                 f"{r['mean_response_length']:>8.1f}{r['nfe_mean']:>8.1f}{r['tpf']:>7.2f}"
                 f"{r.get('tokens_per_s', 0.0):>9.1f}{aups.get(curve, float('nan')):>8.1f}"
                 + "".join(f"{100 * r.get(k, float('nan')):>9.1f}" for k in ks))
  return "\n".join(lines)


def run(config) -> Result:
  e, d = config.eval, config.decode
  mesh = decode_mesh(Batching.of(d))  # the batching keys checked before anything loads
  compiled = {}  # model config -> its compiled decoders, shared by the models that have it
  out = Workdir(config).eval
  models = parse_models(config)
  settings = parse_settings(config)
  grader = grader_for(config)  # an unknown or broken grader: before decoding
  questions = load_rows(e, config.workdir or str(out))
  grader.check(questions, e.data)  # rows it cannot grade: before decoding
  if e.num_samples < 1:
    raise InputError(f"config eval.num_samples must be >= 1, got {e.num_samples}")
  if e.num_samples > 1:  # every question num_samples times: rows carry their sample index
    questions = [dict(q, sample=j) for q in questions for j in range(e.num_samples)]
  multi = len({_family(s) for s in settings}) > 1
  main = is_main_process()
  n = len(questions)
  seed = stage_seed(config, "eval")
  rng = jax.random.key(seed)
  results = []
  bar = tqdm(total=n * len(models) * len(settings), desc="eval", unit="seq", disable=not main)
  k, total = 0, len(models) * len(settings)
  try:
    with StopRequests() as signals:  # SIGTERM / SIGINT: stop after the run in flight
      for name, path in models:
        model = load_model(path, name, config.tokenizer_dir, Numerics.of(config.model))
        if model.cfg not in compiled:  # models of one architecture share compilations
          compiled[model.cfg] = batched.Executables(model.cfg, mesh)
        decoder = Decoder.from_config(d, model.ids, model.cfg,
                                      executables=compiled[model.cfg])
        base_dcfg = decoder.dcfg
        prompts, prompt_ids = tok_lib.build_prompts(model.tokenizer, questions,
                                                    config.prompt_template, e.data, base_dcfg,
                                                    grader.user_message)
        digest = checkpoint.model_digest(path)  # a retrained model at the same path is new
        data_digest = content_digest((p, str(q["answer"])) for p, q in zip(prompts, questions))
        for s in settings:
          at_s = decoder.with_settings(
              strategy=s.strategy, denoising_steps=s.steps,
              **({} if s.threshold is None else {"threshold": s.threshold}))
          dcfg = at_s.dcfg
          fp = _fingerprint(config, digest, data_digest, dcfg)
          samples_path = out / "samples" / name / f"{s.name}.jsonl"
          summary_path = samples_path.with_suffix(".summary.json")
          cached = _finished(summary_path, samples_path, n, fp) if main else None
          if broadcast_from_main(cached is not None):  # the others decode only when 0 does
            if main:
              print(f"[eval] {name} {s.name}: finished before, reused", file=sys.stderr,
                    flush=True)
            if cached is not None:
              results.append(cached)
            bar.update(n)
            k += 1
            continue
          bar.set_postfix_str(f"{name} {s.name}")
          rows, summary = _evaluate(model, s, at_s, prompts, prompt_ids, questions, config, rng,
                                    bar, grader, main)
          if main:
            summary["fingerprint"] = fp
            write_jsonl_atomic(samples_path, rows)
            write_json_atomic(summary_path, summary)
            results.append(summary)
          k += 1
          if signals.requested(k) and k < total:  # between (model, setting) runs
            raise Interrupted(f"eval: stopped by {signals.name} after {k} of {total} "
                              f"(model, setting) runs, each finished one in {out / 'samples'}"
                              "; rerun the same command to resume", 128 + signals.signum)
        del model
  finally:
    bar.close()
  if not main:
    return Result("eval", (out,))

  data = e.data
  curves: dict[str, list] = {}
  for r in results:
    c = _curve(r["model"], Setting.of(r), multi)
    lo, hi = r.get("accuracy_ci95", (r["accuracy"], r["accuracy"]))
    curves.setdefault(c, []).append((r["tpf"], 100.0 * r["accuracy"], 100.0 * lo, 100.0 * hi))
  y_max = max(p[1] for pts in curves.values() for p in pts)
  aups = {c: (aup([p[0] for p in pts], [p[1] for p in pts], y_max=y_max or None)
              if all(p[0] > 0 for p in pts) else 0.0) for c, pts in curves.items()}
  table = format_table(results, aups, multi)
  header = (f"[eval] {data}: {n} questions; block {d.block_size}, temperature "
            f"{d.temperature}, top_k {d.top_k}, top_p {d.top_p}, max_new_tokens "
            f"{d.max_new_tokens}, {d.commit_mode} commit (block-causal), cache {d.cache} "
            "(bidirectional)")
  plot = plot_accuracy_vs_tpf(curves, out / "accuracy_vs_tpf.png", aup=aups,
                              title=f"{data}: accuracy vs tokens per forward")
  write_json_atomic(out / "summary.json", dict(
      data=e.data, limit=e.limit, n=n, decode=d.to_dict(), models=dict(models),
      prompt_template=config.prompt_template, seed=seed, results=results, aup=aups,
      plot=os.fspath(plot)))
  from tensorboardX import SummaryWriter
  with SummaryWriter(str(out / "tb")) as writer:
    for r in results:
      c = _curve(r["model"], Setting.of(r), multi)
      for m in METRICS:
        if m in r:
          writer.add_scalar(f"{c}/{m}", r[m], r["tokens_per_forward"] if "threshold" not in r
                            else round(100 * r["threshold"]))
    for c, v in aups.items():
      writer.add_scalar(f"{c}/aup", v, 0)
  print(header + "\n" + table + f"\n[eval] written to {out}", flush=True)
  for line in _gains(results, aups, config.compare.base):
    print(f"[eval] {line}", flush=True)
  logging.info("eval summary written to %s", out / "summary.json")
  return Result("eval", (out,), dict(results=results, aup=aups, table=table))


def _gains(results, aups, base: str) -> list[str]:
  """Each model against the base (eval's last lines), when the base was evaluated with
  one strategy at tokens-per-forward settings; else nothing."""
  if (len({r["strategy"] for r in results}) != 1 or any("threshold" in r for r in results)
      or not any(group_of(r["model"])[0] == base for r in results)):
    return []
  try:
    return gain_lines(aggregate(results, aups, base), base)
  except ValueError:   # e.g. several base seeds: the compare mode says why
    return []


STAGE = Stage("eval", run, "models x decoding settings -> accuracy, NFE, TPF, tokens/s, AUP",
              keys=("eval", "decode", "prompt_template", "task.name", "model_dir",
                    "tokenizer_dir", "model", "seed"),
              inputs=lambda config, layout: [Path(p) for _, p in layout.models()]
              + workdir_data(layout, config.eval.data),
              outputs=lambda config, layout: [layout.eval])
