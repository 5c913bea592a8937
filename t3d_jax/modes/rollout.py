"""rollout mode: question/answer JSONL -> teacher trajectories JSONL (dLLM-RL layout).

    python -m t3d_jax.main --config configs/rollout.py --config.workdir=/tmp/run \\
        [--config.model_dir=...] [--config.rollout.data=gsm8k_train|math500|path.jsonl]

Each question becomes the math prompt (the tokenizer's chat template on question +
boxed instruction, or ``config.prompt_template``) and is decoded ``rollout.num_samples``
times with the teacher setting of ``config.decode`` (released defaults: block 4, 4 steps,
low_confidence_static, T 0.1, top-p 1, top-k 0). One row per question, in input order,
in <workdir>/trajectories.jsonl (or ``rollout.output``):

    {index, question, answer, prompt,                   # prompt: the exact string decoded
     output: [str], full_output: [str], step_map: [[int]], response_length: [int],
     extracted_output: [str], response_ids: [[int]], nfe: [int]}   # one entry per sample

``output`` is the response text without special tokens, ``full_output`` with them;
``step_map[k][j]`` is the 1-based global denoising step at which ``response_ids[k][j]``
was revealed; ``extracted_output`` is the grader's answer part (math: the last
\\boxed{} content, '' when none; other graders: the stripped output).

Batching and resume. Questions are processed in chunks of ``rollout.chunk_prompts``; in
a chunk the (question, sample) sequences are sorted by prompt length into batches of
``decode.batch_size`` (t3d_jax.sampling.batched), and the chunk's rows are appended in
input order when it finishes. Sample j of question i is decoded with
``fold_in(fold_in(key(seed), i), j)`` whatever its chunk, batch or process, so the
samples depend only on the data, the settings and the seed, not on ``chunk_prompts``,
``decode.batch_size``, ``decode.width_multiple`` or the process count: rerunning the same
command, or resuming with another batch size, skips the rows already written (a torn last
line is cut) and the final file equals that of an uninterrupted run. The settings that
decide the samples are fingerprinted in <output stem>.meta.json; resuming onto a file
written with other settings is refused, naming the keys, unless
``--config.overwrite=True`` (which starts over). SIGTERM / SIGINT: the chunk in flight
is finished and written, then the run stops (exit 128 + the signal) with one line saying
where to resume; a second signal stops it at once (the rows written so far stay valid).

With several processes (multi-host, or launch/cpu_multiprocess.sh) each one loads the
whole model and decodes its share of every chunk's batches (batch b on process
b mod process_count); the results are all-gathered and only process 0 writes, so the
file is the one a single process writes. Process 0 also decides where to resume (its row
count is broadcast), so only it needs to see the output.

At the end every sample is graded with ``task.name`` when the rows carry answers
(:mod:`t3d_jax.evaluation.teacher`): the teacher's accuracy is printed, recorded in
<output stem>.meta.json (``teacher``) and the stage summary, and below
``rollout.min_teacher_accuracy`` the stage fails with one line saying what to do (the
trajectories stay; ``--config.force=True`` goes on), so nothing distils a teacher that
cannot do the task. A step_map heat-map of the first ``rollout.plot_trajectories`` rows
is written next to the output (<output stem>.step_maps.png).
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import jax
from absl import logging
from tqdm import tqdm

from t3d_jax import checkpoint
from t3d_jax.convert import load_model
from t3d_jax.data import tokenizer as tok_lib
from t3d_jax.data.datasets import load_rows
from t3d_jax.data.jsonl import JsonlAppender, count_rows, iter_jsonl, write_json_atomic
from t3d_jax.errors import InputError, Interrupted
from t3d_jax.evaluation import teacher
from t3d_jax.models import family as families
from t3d_jax.models.numerics import Numerics
from t3d_jax.sampling import Batching, Decoder, batched
from t3d_jax.config_base import library_defaults
from t3d_jax.config_keys import as_json, differences, stage_seed
from t3d_jax.digests import content_digest
from t3d_jax.digests import fingerprint as config_fingerprint
from t3d_jax.distributed import broadcast_from_main, is_main_process
from t3d_jax.modes.stage import Result, Stage, workdir_data
from t3d_jax.tasks import Task, grader_for
from t3d_jax.train.preemption import StopRequests
from t3d_jax.workdir import Workdir


def fingerprint(config, model_path: str, dcfg, prompts, questions) -> dict:
  """What a resumed run must share with the run that wrote the rows: the model's and the
  questions' content, and every decoding setting."""
  return dict(model=checkpoint.model_digest(model_path),
              data=content_digest((p, str(q["answer"])) for p, q in zip(prompts, questions)),
              num_samples=config.rollout.num_samples, seed=stage_seed(config, "rollout"),
              decode=dataclasses.asdict(dcfg), **batched.key_record(dcfg))


def _prepare_output(out: Path, meta: Path, fp: dict, overwrite: bool, family: str) -> None:
  """Refuse to resume onto rows written with other settings; record the settings and the
  model's family (distill refuses trajectories of another family)."""
  digest = config_fingerprint(fp)
  if count_rows(out) > 0:
    old = json.loads(meta.read_text()) if meta.is_file() else {}
    if old.get("fingerprint") == digest:
      return
    changed = differences(old.get("settings", {}), as_json(fp), defaults=library_defaults())
    if "settings" in old and not changed[0]:
      return  # the same settings, or keys added since that hold their defaults
    if not overwrite:
      why = (f"no {meta.name} found" if not old else
             "other settings ({} differ: {})".format(*changed))
      raise InputError(f"{out}: already holds rows written by a run with {why}; use another "
                       "workdir / rollout.output or --config.overwrite=True to start over")
    out.unlink()
  elif out.exists():
    out.unlink()  # empty or only a torn line
  write_json_atomic(meta, dict(fingerprint=digest, settings=fp, family=family))


def _open_output(out: Path, meta: Path, fp: dict, overwrite: bool, n: int, main: bool,
                 family: str):
  """Process 0 checks / records the settings and opens the output; every process gets its
  row count (the rows to skip). Returns (writer or None, rows done)."""
  writer, done = None, -1
  try:
    if main:
      _prepare_output(out, meta, fp, overwrite, family)
      writer = JsonlAppender(out)
      if writer.rows > n:
        writer.close()
        raise InputError(f"{out}: holds {writer.rows} rows but the data has only {n} "
                         "questions")
      done = writer.rows
  finally:  # also when process 0 failed: the others must not wait for it at a collective
    done = broadcast_from_main(done)
  if done < 0:
    raise InputError(f"{out}: process 0 could not open the output (see its log)")
  return writer, done


def _row(model, q: dict, prompt: str, samples: list[dict], grader: Task) -> dict:
  tok = model.tokenizer
  texts = [tok.decode(s["response_ids"], skip_special_tokens=False) for s in samples]
  outputs = [tok.decode(s["response_ids"], skip_special_tokens=True) for s in samples]
  return dict(index=q["index"], question=q["question"], answer=q["answer"], prompt=prompt,
              output=outputs, full_output=texts, step_map=[s["step_map"] for s in samples],
              response_length=[s["length"] for s in samples],
              extracted_output=[grader.extract(o) for o in outputs],
              response_ids=[s["response_ids"] for s in samples],
              nfe=[s["nfe"] for s in samples])


def plot_trajectories(out: Path, png: Path, prompt_ids, dcfg, k: int,
                      canvas: bool = False) -> None:
  """Heat-map of the first ``k`` rows' first sample, blocks aligned as decoded (in the
  engine prompt mode the first block starts with the prompt tail, left blank; a
  bidirectional family's ``canvas`` starts on a block boundary)."""
  from t3d_jax.evaluation.plots import plot_step_maps
  maps, titles = [], []
  for _, obj in iter_jsonl(out):
    if len(maps) >= k:
      break
    i = int(obj["index"])
    tail = 0 if canvas else dcfg.prompt_tail(len(prompt_ids[i]))
    maps.append([0] * tail + list(obj["step_map"][0]))
    titles.append(f"row {i} ({obj['response_length'][0]} tok)")
  if maps:
    plot_step_maps(maps, png, block_size=dcfg.block_size, titles=titles)


def run(config) -> Result:
  r, d = config.rollout, config.decode
  layout = Workdir(config)
  layout.root("rollout mode")
  Batching.of(d)  # its checks, before the model loads
  for key, value in (("rollout.num_samples", r.num_samples),
                     ("rollout.chunk_prompts", r.chunk_prompts)):
    if value < 1:
      raise InputError(f"config {key} must be >= 1, got {value}")
  teacher.check_minimum(r.min_teacher_accuracy)
  grader = grader_for(config)  # an unknown or broken grader: before decoding
  src = layout.model
  model = load_model(src, "teacher", config.tokenizer_dir, Numerics.of(config.model))
  decoder = Decoder.from_config(d, model.ids, model.cfg)
  dcfg = decoder.dcfg
  questions = load_rows(r, config.workdir)
  prompts, prompt_ids = tok_lib.build_prompts(model.tokenizer, questions,
                                              config.prompt_template, r.data, dcfg,
                                              grader.user_message)
  out = layout.trajectories
  meta, png = layout.beside_trajectories(".meta.json"), layout.beside_trajectories(".step_maps.png")
  main = is_main_process()
  n, ns = len(questions), r.num_samples
  writer, done = _open_output(out, meta, fingerprint(config, src, dcfg, prompts, questions),
                              config.overwrite, n, main,
                              families.of_config(decoder.cfg).name)
  logging.info("rollout: %d questions x %d samples from %s, model %s, %s", n, ns, r.data, src,
               dcfg)
  key = jax.random.key(stage_seed(config, "rollout"))
  if done:
    note = f"[rollout] resuming: {done} of {n} rows already in {out}"
    if main:  # once on the terminal; the other processes with --verbosity
      print(note, file=sys.stderr, flush=True)
    else:
      logging.info(note)
  t0, tokens, nfe = time.time(), 0, 0
  bar = tqdm(total=n * ns, initial=done * ns, desc="rollout", unit="seq", disable=not main)
  try:
    with StopRequests() as signals:  # SIGTERM / SIGINT: stop after the chunk in flight
      for c, start in enumerate(range(0, n, r.chunk_prompts)):
        stop = min(n, start + r.chunk_prompts)
        if stop <= done:
          continue
        pairs = [(i, j) for i in range(start, stop) for j in range(ns)]
        seqs = [prompt_ids[i] for i, _ in pairs]
        base = bar.n

        def progress(k, base=base, first=max(0, done - start) * ns):
          bar.update(max(0, base + max(0, k - first) - bar.n))

        # collective: every process decodes its batches, every one gets all results
        res = decoder.decode(model.params, seqs, key, progress=progress, sample_ids=pairs)
        for j, i in enumerate(range(start, stop)):
          if i < done:
            continue
          samples = res[j * ns:(j + 1) * ns]
          tokens += sum(s["length"] for s in samples)
          nfe += sum(s["nfe"] for s in samples)
          if writer is not None:
            writer.write(_row(model, questions[i], prompts[i], samples, grader))
        done = stop
        bar.update(max(0, done * ns - bar.n))
        if signals.requested(c) and done < n:  # a chunk boundary: its rows are on disk
          raise Interrupted(f"rollout: stopped by {signals.name} after {done} of {n} rows "
                            f"in {out}; rerun the same command to resume",
                            128 + signals.signum)
  finally:
    bar.close()
    if writer is not None:
      writer.close()
  dt = time.time() - t0
  if main and r.plot_trajectories > 0:
    plot_trajectories(out, png, prompt_ids, dcfg, r.plot_trajectories,
                      canvas=families.of_config(decoder.cfg).attention == "bidirectional")
  measured = _measure_teacher(out, meta, grader, main)
  msg = (f"[rollout] {n} rows ({n * ns} samples) in {out}; {teacher.describe(measured)}; "
         f"this run: {tokens} tokens, {nfe} forwards (TPF {tokens / max(nfe, 1):.2f}), "
         f"{dt:.1f}s incl. compilation")
  if main:
    print(msg, flush=True)
  logging.info(msg)
  teacher.check(measured, r.min_teacher_accuracy, config.force, out)
  return Result("rollout", (out,), dict(rows=n, samples=n * ns, tokens=tokens, nfe=nfe,
                                        teacher=measured))


def _measure_teacher(out: Path, meta: Path, grader: Task, main: bool) -> dict:
  """Process 0 grades the samples and records the figures in the meta file; every process
  gets them (the gate must stop them all)."""
  m = teacher.measure(out, grader) if main else {}
  if main:
    write_json_atomic(meta, dict(json.loads(meta.read_text()), teacher=m))
  measured, correct, samples = (broadcast_from_main(v) for v in (
      bool(m.get("measured")), m.get("correct", 0), m.get("samples", 0)))
  if main:
    return m
  if not measured:
    return dict(measured=False, why="not measurable (see process 0)")
  return dict(measured=True, task=grader.name, samples=samples, correct=correct,
              accuracy=correct / max(samples, 1))


STAGE = Stage("rollout", run, "question/answer JSONL -> the teacher's trajectories JSONL",
              keys=("rollout", "decode", "prompt_template", "model_dir", "tokenizer_dir",
                    "model", "seed"),
              inputs=lambda config, layout: [layout.model] + workdir_data(
                  layout, config.rollout.data),
              outputs=lambda config, layout: [layout.trajectories])
