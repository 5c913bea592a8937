"""rollout mode end to end through the CLI on the tiny model: trajectories in the dLLM-RL
layout, valid step_maps, heat-map PNG, exact resume, distill loader, bad input."""
import json
import shutil

import pytest

from decode_setup import (DECODE_FLAGS, PNG_SIGNATURE, QUESTIONS, cli, load_config,
                          read_jsonl, signal_during_call, tiny_model, write_questions)
from t3d_jax.data import tokenizer as tok_lib
from t3d_jax.errors import InputError

N_NEW, BLOCK, SAMPLES = 10, 4, 2
N = 7  # questions; chunks of 3 -> 3 chunks, the last one short


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tiny_model(tmp_path_factory)
  data = write_questions(tmp_path_factory.mktemp("rollout_data") / "q.jsonl", N)
  return root, data


def rollout_flags(work, root, data, *extra):
  return (f"--config.workdir={work}", f"--config.model_dir={root / 'model'}",
          f"--config.rollout.data={data}", f"--config.rollout.num_samples={SAMPLES}",
          "--config.rollout.chunk_prompts=3", "--config.decode.batch_size=4",
          f"--config.decode.max_new_tokens={N_NEW}", f"--config.decode.block_size={BLOCK}",
          f"--config.decode.denoising_steps={BLOCK}", *DECODE_FLAGS, *extra)


def check_step_map(smap, tail, steps, block=BLOCK):
  """Blocks as decoded (the first one holds the prompt tail): every block's steps come
  after the previous block's; with one token per step a finished block is revealed at
  consecutive steps, the last (possibly cut) one at distinct steps within its budget."""
  sizes, left = [], len(smap)
  first = block - tail
  while left:
    k = min(first if not sizes else block, left)
    sizes.append(k)
    left -= k
  prev, pos = 0, 0
  for bi, k in enumerate(sizes):
    vals = smap[pos:pos + k]
    pos += k
    assert len(set(vals)) == len(vals), (smap, bi)
    assert all(prev < v <= prev + steps for v in vals), (smap, bi, prev)
    if bi < len(sizes) - 1:
      assert sorted(vals) == list(range(prev + 1, prev + k + 1)), (smap, bi)
    prev = max(vals)


def test_rollout_writes_trajectories_and_resumes_exactly(setup, tmp_path):
  root, data = setup
  a = tmp_path / "a"
  r = cli("rollout", *rollout_flags(a, root, data))
  assert r.returncode == 0, r.stderr[-4000:]
  assert f"{N} rows ({N * SAMPLES} samples)" in r.stdout
  tok = tok_lib.load_tokenizer(root / "tokenizer")
  ids = tok_lib.special_ids(tok)
  rows = read_jsonl(a / "trajectories.jsonl")
  assert [x["index"] for x in rows] == list(range(N))  # input order
  differs = 0
  for row, (q, ans) in zip(rows, QUESTIONS):
    assert (row["question"], row["answer"]) == (q, ans)
    assert row["prompt"] == tok_lib.math_prompt(tok, q)
    assert row["prompt"].endswith("<|im_start|>assistant\n")
    for key in ("output", "full_output", "step_map", "response_length", "extracted_output",
                "response_ids", "nfe"):
      assert isinstance(row[key], list) and len(row[key]) == SAMPLES, key
    tail = len(tok_lib.encode(tok, [row["prompt"]])[0]) % BLOCK
    for k in range(SAMPLES):
      resp, smap, n = row["response_ids"][k], row["step_map"][k], row["response_length"][k]
      assert 1 <= n <= N_NEW and len(resp) == len(smap) == n
      assert tok.decode(resp, skip_special_tokens=False) == row["full_output"][k]
      assert tok.decode(resp, skip_special_tokens=True) == row["output"][k]
      assert all(0 <= t < ids.vocab_size and t != ids.mask_id for t in resp)
      assert not any(t in ids.stop_ids for t in resp[:-1])  # cut right after a stop id
      assert n == N_NEW or resp[-1] in ids.stop_ids
      check_step_map(smap, tail, BLOCK)
      assert row["nfe"][k] >= max(smap)
      assert isinstance(row["extracted_output"][k], str)
    differs += row["response_ids"][0] != row["response_ids"][1]
  assert differs, "the samples of every question are identical: rng not per sample"
  png = a / "trajectories.step_maps.png"
  assert png.read_bytes()[:8] == PNG_SIGNATURE and png.stat().st_size > 1000
  assert json.loads((a / "trajectories.meta.json").read_text())["fingerprint"]

  # the trajectories feed the distill loader as written
  from t3d_jax.distill.data import load_trajectory_samples
  samples, counts = load_trajectory_samples(a / "trajectories.jsonl", tok)
  assert counts == dict(rows=N, samples=N * SAMPLES, dropped_long_prompt=0)
  assert list(samples[0].response_ids) == rows[0]["response_ids"][0]
  assert list(samples[1].step_map) == rows[0]["step_map"][1]
  assert list(samples[0].prompt_ids) == tok_lib.encode(tok, [rows[0]["prompt"]])[0]

  # killed while writing row 5 (chunk 1 half done): rerun continues, same file, even
  # with other batches and chunks (sampled at T 0.1: per-sequence keys)
  b = tmp_path / "b"
  shutil.copytree(a, b)
  lines = (a / "trajectories.jsonl").read_bytes().split(b"\n")
  (b / "trajectories.jsonl").write_bytes(b"\n".join(lines[:4]) + b"\n" + lines[4][:50])
  (b / "trajectories.step_maps.png").unlink()
  r = cli("rollout", *rollout_flags(b, root, data, "--config.decode.batch_size=1",
                                    "--config.rollout.chunk_prompts=2"))
  assert r.returncode == 0, r.stderr[-4000:]
  assert f"resuming: 4 of {N} rows" in r.stderr
  assert (b / "trajectories.jsonl").read_bytes() == (a / "trajectories.jsonl").read_bytes()
  assert (b / "trajectories.step_maps.png").is_file()

  # rows sampled before per-sequence keys (their record lists the grouping instead): not
  # resumed onto, the line names the key (that record's grouping keys count as settings)
  meta = json.loads((b / "trajectories.meta.json").read_text())
  old = dict(meta["settings"], batch_size=4, chunk_prompts=3, width_multiple=192)
  del old["sample_keys"]
  c = tmp_path / "c"
  c.mkdir()
  (c / "trajectories.meta.json").write_text(json.dumps(dict(fingerprint="old", settings=old)))
  (c / "trajectories.jsonl").write_bytes(b"\n".join(lines[:4]) + b"\n")
  r = cli("rollout", *rollout_flags(c, root, data))
  assert r.returncode == 2
  assert "sample_keys: '<unset>' -> 'fold_in(" in r.stderr, r.stderr

  # other decoding settings onto those rows: refused, naming the key
  r = cli("rollout", *rollout_flags(b, root, data, "--config.decode.temperature=0.5"))
  assert r.returncode == 2
  assert "other settings (1 differ: decode.temperature: 0.1 -> 0.5)" in r.stderr, r.stderr


def _config(work, model, data, **decode):
  c = load_config("rollout")
  c.workdir, c.model_dir = str(work), str(model)
  c.rollout.data = str(data)
  c.decode.max_new_tokens = N_NEW
  c.decode.max_length = 192
  c.decode.update(decode)
  return c


@pytest.mark.parametrize("case", ["empty", "malformed", "no_answer", "no_model", "too_long",
                                  "bad_strategy"])
def test_rollout_bad_input_is_one_clear_error(setup, tmp_path, case):
  from t3d_jax.modes import rollout
  root, data = setup
  model, decode = root / "model", {}
  if case == "empty":
    data = tmp_path / "empty.jsonl"
    data.write_text("\n")
    match = "empty file"
  elif case == "malformed":
    data = tmp_path / "bad.jsonl"
    data.write_text('{"question": "a", "answer": "1"}\n{"question": "b", "answer": \n')
    match = "bad.jsonl, row 2: malformed JSON"
  elif case == "no_answer":
    data = tmp_path / "bad.jsonl"
    data.write_text('{"question": "a", "answer": "1"}\n{"question": "b"}\n')
    match = "bad.jsonl, row 2: row has no 'answer' field"
  elif case == "no_model":
    model = tmp_path / "nowhere"
    match = "nowhere does not exist"
  elif case == "too_long":
    decode = dict(max_length=64)
    match = r"q.jsonl, row 1: prompt too long: \d+ tokens > budget 54"
  else:
    decode = dict(strategy="fastest")
    match = "config.decode: DecodeConfig: strategy 'fastest'"
  with pytest.raises(InputError, match=match):
    rollout.run(_config(tmp_path / "w", model, data, **decode))
  assert not (tmp_path / "w" / "trajectories.jsonl").exists()


def test_rollout_refuses_to_resume_with_other_settings(setup, tmp_path):
  from t3d_jax.modes import rollout
  root, data = setup
  work = tmp_path / "w"
  work.mkdir()
  (work / "trajectories.jsonl").write_text('{"index": 0}\n')
  with pytest.raises(InputError, match="no trajectories.meta.json found"):
    rollout.run(_config(work, root / "model", data))
  (work / "trajectories.meta.json").write_text('{"fingerprint": "0123"}')
  with pytest.raises(InputError, match="other settings.*overwrite=True"):
    rollout.run(_config(work, root / "model", data, temperature=0.5))


def test_cli_bad_input_exits_2_with_one_line(setup, tmp_path):
  root, data = setup
  r = cli("rollout", f"--config.workdir={tmp_path}", f"--config.model_dir={tmp_path / 'gone'}",
          f"--config.rollout.data={data}")
  assert r.returncode == 2
  assert r.stderr.strip().splitlines()[-1] == (
      f"error: model 'teacher': {tmp_path / 'gone'} does not exist (a model dir from the "
      "convert or distill mode, or an HF dir)")
  assert "Traceback" not in r.stderr


def test_rows_through_tfds_equal_jsonl_and_prompt_template(setup, tmp_path):
  from t3d_jax.convert import load_model
  from t3d_jax.data.datasets import load_rows
  from t3d_jax.sampling import DecodeConfig
  root, data = setup
  c = _config(tmp_path, root / "model", data)
  direct = load_rows(c.rollout, c.workdir)
  c.rollout.use_tfds = True
  assert load_rows(c.rollout, c.workdir) == direct
  assert (tmp_path / "tfds" / "t3d_math_qa").is_dir()
  assert [r["question"] for r in direct] == [q for q, _ in QUESTIONS[:N]]
  model = load_model(root / "model")
  dcfg = DecodeConfig.from_config(c.decode, model.ids)
  texts, ids = tok_lib.build_prompts(model.tokenizer, direct[:2], "Q: {question}\nA:", "q",
                                     dcfg)
  assert texts == [f"Q: {QUESTIONS[0][0]}\nA:", f"Q: {QUESTIONS[1][0]}\nA:"]
  assert ids == tok_lib.encode(model.tokenizer, texts)
  with pytest.raises(InputError, match="no {question} placeholder"):
    tok_lib.build_prompts(model.tokenizer, direct[:1], "Q:", "q", dcfg)


def test_sigterm_stops_at_a_chunk_boundary_and_the_resume_is_exact(setup, tmp_path,
                                                                   monkeypatch):
  """SIGTERM while chunk 2 of 3 decodes: that chunk is finished and written, the run stops
  (Interrupted, exit code 143) with the rows of 2 chunks on disk; rerunning gives the
  file of an uninterrupted run byte for byte."""
  import signal
  from t3d_jax.errors import Interrupted
  from t3d_jax.modes import rollout
  from t3d_jax.sampling import batched
  root, data = setup

  def config(work):
    c = _config(work, root / "model", data)
    c.rollout.chunk_prompts, c.rollout.num_samples, c.rollout.plot_trajectories = 3, 2, 0
    return c
  rollout.run(config(tmp_path / "whole"))
  signal_during_call(monkeypatch, batched, "decode", 2, signal.SIGTERM)
  with pytest.raises(Interrupted, match=f"stopped by SIGTERM after 6 of {N} rows") as e:
    rollout.run(config(tmp_path / "w"))
  assert e.value.exit_code == 128 + signal.SIGTERM
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored
  assert len(read_jsonl(tmp_path / "w" / "trajectories.jsonl")) == 6
  monkeypatch.undo()
  rollout.run(config(tmp_path / "w"))
  assert ((tmp_path / "w" / "trajectories.jsonl").read_bytes()
          == (tmp_path / "whole" / "trajectories.jsonl").read_bytes())


def test_stage_seeds_are_independent(setup, tmp_path, monkeypatch):
  """Another distill/eval/pretrain seed leaves the rollout's rows valid (reused as they
  are, nothing decoded); another rollout.seed is refused, naming it."""
  from t3d_jax.modes import rollout
  from t3d_jax.sampling import batched
  from t3d_jax.config_keys import stage_seed
  root, data = setup
  c = _config(tmp_path, root / "model", data)
  c.rollout.plot_trajectories = 0
  rollout.run(c)
  before = (tmp_path / "trajectories.jsonl").read_bytes()
  c.distill.seed, c.eval.seed, c.pretrain.seed = 5, 6, 7
  assert [stage_seed(c, s) for s in ("rollout", "distill", "eval", "pretrain")] == [0, 5, 6, 7]
  monkeypatch.setattr(batched, "decode", lambda *a, **k: pytest.fail("decoded again"))
  rollout.run(c)
  assert (tmp_path / "trajectories.jsonl").read_bytes() == before
  c.rollout.seed = 1
  with pytest.raises(InputError, match=r"other settings \(1 differ: seed: 0 -> 1\)"):
    rollout.run(c)
