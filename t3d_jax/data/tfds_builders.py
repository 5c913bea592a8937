"""tensorflow-datasets builders that build from local files only, read without TensorFlow.

Two builders, ``array_record`` files, no download and no GCS (``try_download_gcs=False``,
download dir inside ``data_dir``), records written in file order
(``disable_shuffling=True``: shuffling is the iterator's job, seeded):

* :class:`T3dMathQa` (``t3d_math_qa``): question/answer sets. Configs ``gsm8k`` (splits
  train, test) and ``math500`` (split test) read the JSONL shipped in the package;
  :func:`user_qa_config` makes a config for any user JSONL with question/answer fields
  (field names configurable). Features: ``question``, ``answer`` (text), ``index`` (row
  position in the source file's question/answer rows).
* :class:`T3dTrajectories` (``t3d_trajectories``): rollout rows
  ``{question, answer, prompt, response_ids, step_map[, response, index]}`` from the
  rollout JSONL (:func:`trajectory_config`). ``response_ids`` and ``step_map`` are int32
  sequences of equal length (checked per row, with file and row in the error).

User and trajectory configs are named after the file stem plus a hash of the file's
bytes, so a changed file builds a new dataset instead of silently reusing a stale one.

Read back with ``builder.as_data_source()[split]``, ``tfds.data_source(...)`` or
:func:`open_dataset_dir` (``tfds.builder_from_directory``); text comes back as bytes,
sequences as numpy arrays; :mod:`t3d_jax.data.loader` turns records into python rows.
TensorFlow is not needed for any of this and is not a dependency.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import re
from typing import Mapping, Optional, Union

import numpy as np
import tensorflow_datasets as tfds

from t3d_jax.data import datasets, jsonl

PathLike = Union[str, os.PathLike]
FILE_FORMAT = "array_record"


class QaConfig(tfds.core.BuilderConfig):
  """Question/answer set: ``splits`` maps split name -> shipped name or JSONL path."""

  def __init__(self, *, name: str, splits: Mapping[str, str],
               question_field: str = "question", answer_field: str = "answer",
               description: str = ""):
    super().__init__(name=name, description=description)
    self.splits = dict(splits)
    self.question_field = question_field
    self.answer_field = answer_field


class TrajectoryConfig(tfds.core.BuilderConfig):
  """Rollout trajectories: ``splits`` maps split name -> rollout JSONL path."""

  def __init__(self, *, name: str, splits: Mapping[str, str], description: str = ""):
    super().__init__(name=name, description=description)
    self.splits = dict(splits)


def _fingerprint(paths) -> str:
  h = hashlib.sha256()
  for p in paths:
    h.update(pathlib.Path(p).read_bytes())
  return h.hexdigest()[:12]


def _config_name(stem: str, paths) -> str:
  stem = re.sub(r"[^a-z0-9_]+", "_", stem.lower()).strip("_") or "data"
  return f"{stem}_{_fingerprint(paths)}"


def user_qa_config(splits: Mapping[str, PathLike], question_field: str = "question",
                   answer_field: str = "answer", name: Optional[str] = None) -> QaConfig:
  """Config for user JSONL file(s), e.g. ``user_qa_config({"train": "my.jsonl"})``."""
  paths = {s: os.fspath(datasets.resolve_dataset(p)) for s, p in splits.items()}
  stem = name or pathlib.Path(next(iter(paths.values()))).stem
  return QaConfig(name=_config_name(stem, [paths[s] for s in sorted(paths)]), splits=paths,
                  question_field=question_field, answer_field=answer_field,
                  description=f"user question/answer JSONL: {paths}")


def trajectory_config(splits: Mapping[str, PathLike],
                      name: Optional[str] = None) -> TrajectoryConfig:
  """Config for rollout JSONL file(s), e.g. ``trajectory_config({"train": path})``."""
  paths = {s: os.fspath(datasets.resolve_dataset(p)) for s, p in splits.items()}
  stem = name or pathlib.Path(next(iter(paths.values()))).stem
  return TrajectoryConfig(name=_config_name(stem, [paths[s] for s in sorted(paths)]),
                          splits=paths, description=f"rollout trajectories: {paths}")


class T3dMathQa(tfds.core.GeneratorBasedBuilder):
  """Math question/answer sets from local JSONL (shipped GSM8K/MATH500 or user files)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Question/answer rows from local JSONL."}
  BUILDER_CONFIGS = [
      QaConfig(name="gsm8k", splits={"train": "gsm8k_train", "test": "gsm8k_test"},
               description="GSM8K (shipped); answers end with '#### N'."),
      QaConfig(name="math500", splits={"test": "math500"},
               description="MATH500 (shipped); answers are final LaTeX answers."),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "question": tfds.features.Text(),
            "answer": tfds.features.Text(),
            "index": np.int64,
        }),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager  # local files only
    return {split: self._generate_examples(src) for split, src in self.builder_config.splits.items()}

  def _generate_examples(self, src):
    cfg = self.builder_config
    for row in datasets.load_qa(src, cfg.question_field, cfg.answer_field):
      yield row["index"], row


def _int_list(obj, field, path, row):
  value = obj.get(field)
  if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool)
                                            for v in value):
    raise jsonl.JsonlError(f"{path}, row {row}: field {field!r} must be a list of ints")
  return value


def trajectory_rows(path: PathLike):
  """Validated trajectory rows of a rollout JSONL (what :class:`T3dTrajectories` stores)."""
  for n, (row, obj) in enumerate(jsonl.iter_jsonl(path)):
    out = {}
    for field in ("question", "answer", "prompt"):
      out[field] = jsonl.text_field(obj, field, path, row)
    out["response"] = str(obj.get("response", "") or "")
    out["response_ids"] = np.asarray(_int_list(obj, "response_ids", path, row), np.int32)
    out["step_map"] = np.asarray(_int_list(obj, "step_map", path, row), np.int32)
    if len(out["response_ids"]) != len(out["step_map"]):
      raise jsonl.JsonlError(f"{path}, row {row}: response_ids has {len(out['response_ids'])}"
                             f" ids but step_map has {len(out['step_map'])} entries")
    out["index"] = int(obj.get("index", n))
    yield n, out


class T3dTrajectories(tfds.core.GeneratorBasedBuilder):
  """Teacher rollout trajectories (prompt, response ids, step_map) from local JSONL."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Trajectory rows from rollout JSONL."}
  BUILDER_CONFIGS = []

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "question": tfds.features.Text(),
            "answer": tfds.features.Text(),
            "prompt": tfds.features.Text(),
            "response": tfds.features.Text(),
            # Tensor, not Sequence: without TF a Sequence decodes to a list of scalars.
            "response_ids": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "step_map": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "index": np.int64,
        }),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(path)
            for split, path in self.builder_config.splits.items()}

  def _generate_examples(self, path):
    yield from trajectory_rows(path)


def prepare(builder_cls, config: Union[str, tfds.core.BuilderConfig],
            data_dir: PathLike) -> tfds.core.DatasetBuilder:
  """Builds (once) and returns the builder; later calls reuse the prepared files."""
  data_dir = pathlib.Path(data_dir)
  builder = builder_cls(config=config, data_dir=str(data_dir), file_format=FILE_FORMAT)
  builder.download_and_prepare(
      download_dir=str(data_dir / "downloads"),
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder


def build_qa(data_dir: PathLike, source: Union[str, QaConfig] = "gsm8k"):
  """Prepared question/answer builder: ``"gsm8k"``, ``"math500"``, a :class:`QaConfig`,
  or a path to a user JSONL (one ``train`` split, default field names)."""
  if isinstance(source, str) and source not in ("gsm8k", "math500"):
    source = user_qa_config({"train": source})
  return prepare(T3dMathQa, source, data_dir)


def build_trajectories(data_dir: PathLike, path: Union[PathLike, TrajectoryConfig],
                       split: str = "train"):
  """Prepared trajectory builder for one rollout JSONL (or a :class:`TrajectoryConfig`)."""
  config = path if isinstance(path, TrajectoryConfig) else trajectory_config({split: path})
  return prepare(T3dTrajectories, config, data_dir)


def open_dataset_dir(dataset_dir: PathLike, split: str):
  """Random-access source of a prepared dataset dir (``.../<name>/<config>/<version>``),
  without importing this module's builders (``tfds.builder_from_directory``)."""
  builder = tfds.builder_from_directory(os.fspath(dataset_dir))
  return builder.as_data_source(split=split)
