"""LLaDA and Dream: checkpoints in their published layouts (written here from tiny random
transformers LLaMA / Qwen2 models), converted and exported byte-exact, logits equal to
transformers with an all-visible mask, and the bidirectional sampler token for token
equal to a naive decoder in torch (LLaDA's published ``generate``, whole sequence every
step, no cache)."""
from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest
import torch
from hf_models import make_dream, make_llada, torch_logits

from t3d_jax import api, models
from t3d_jax.checkpoint import ConversionError
from t3d_jax.convert import (convert_hf_to_model_dir, export_model_dir_to_hf, load_params,
                             model_config)
from t3d_jax.data.tokenizer_build import gsm8k_texts, train_tiny_bpe
from t3d_jax.models import family as families
from t3d_jax.sampling import DecodeConfig, DecodeError, make_generate

MAKERS = {"llada": make_llada, "dream": make_dream}
MASK = 298  # the checkpoints' config.json mask_token_id (the tokenizer's is another id)


@pytest.fixture(scope="module", params=sorted(MAKERS))
def ckpt(request, tmp_path_factory):
  """(family name, HF dir, the torch model with the same weights, params, cfg)."""
  d = tmp_path_factory.mktemp(request.param) / "hf"
  model = MAKERS[request.param](d)
  params, cfg = load_params(d)
  return request.param, d, model, params, cfg


def test_family_from_model_type(ckpt):
  name, d, _, _, cfg = ckpt
  assert families.of_config(cfg).name == name
  assert cfg.mask_token_id == MASK
  assert families.of_config(cfg).attention == "bidirectional"


def test_logits_equal_transformers_with_all_visible_mask(ckpt):
  """models.forward on the converted weights = transformers (LLaMA for LLaDA, Qwen2 for
  Dream) under an all-visible 4D mask, on ids holding mask tokens; and that mask is
  honoured by transformers (a causal one gives other logits)."""
  _, d, model, params, cfg = ckpt
  rng = np.random.RandomState(0)
  ids = rng.randint(0, cfg.vocab_size, (2, 13))
  ids[:, 4], ids[1, 9:] = MASK, MASK
  full = np.ones((2, 13, 13), bool)
  pos = np.tile(np.arange(13), (2, 1))
  ours = np.asarray(models.forward(params, cfg, ids, full, pos))
  ref = torch_logits(model, ids, full, pos)
  assert np.abs(ours - ref).max() <= 1e-4
  assert np.abs(torch_logits(model, ids, np.tril(full), pos) - ref).max() > 1e-2


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_convert_export_byte_exact_bf16(tmp_path, name):
  """HF dir -> model dir -> HF dir: every tensor byte-identical by name, bf16 kept as
  bf16, config.json verbatim (model_type, auto_map), the tokenizer copied."""
  hf = tmp_path / "hf"
  MAKERS[name](hf, dtype=torch.bfloat16)
  (hf / "tokenizer.json").write_text('{"stand-in": true}')
  cfg = convert_hf_to_model_dir(hf, tmp_path / "model")
  assert cfg.param_dtype == "bfloat16" and families.of_config(cfg).name == name
  assert model_config(tmp_path / "model") == cfg
  out = export_model_dir_to_hf(tmp_path / "model", tmp_path / "out")
  assert (out / "config.json").read_bytes() == (hf / "config.json").read_bytes()
  assert (out / "tokenizer.json").read_bytes() == (hf / "tokenizer.json").read_bytes()
  import safetensors.torch as st
  a, b = st.load_file(hf / "model.safetensors"), {}
  for shard in out.glob("*.safetensors"):
    b.update(st.load_file(shard))
  assert set(a) == set(b)
  for k in a:
    assert a[k].dtype == b[k].dtype == torch.bfloat16, k
    assert a[k].view(torch.int16).equal(b[k].view(torch.int16)), k


# --------------------------------------------------------------------------- decoding

def _kept(past, positions):
  """A transformers DynamicCache holding ``past``'s keys and values at ``positions``."""
  import transformers
  c = transformers.DynamicCache()
  for i, layer in enumerate(past.layers):
    c.update(layer.keys[:, :, positions], layer.values[:, :, positions], i)
  return c


def naive_generate(model, prompt, gen_length, block_length, steps_per_block, shift,
                   stop_ids=(), cache="none") -> list[int]:
  """LLaDA's published generate (greedy, low-confidence remasking) in torch, cut after
  the first stop id: ``cache`` none runs the whole sequence every step under an
  all-visible mask. ``shift``: Dream reads the prediction for position i from the output
  at i - 1.

  Fast-dLLM's prefix / dual cache with transformers' own KV cache: a block's first step
  runs over the whole sequence and keeps every key and value; each later step queries
  [block start - shift, end) (prefix: end = the sequence's; dual: the block's) against
  the kept keys before the block (and, dual, after it) plus its own, whose position
  before the block (Dream) is masked out: its key is the kept one."""
  shift = int(shift)
  p = len(prompt)
  x = torch.full((1, p + gen_length), MASK, dtype=torch.long)
  x[0, :p] = torch.tensor(prompt)
  n = x.shape[1]
  base, rem = divmod(block_length, steps_per_block)
  sched = [base + (i < rem) for i in range(steps_per_block)]
  model.config._attn_implementation = "sdpa"
  for k in range(gen_length // block_length):
    start = p + k * block_length
    end = start + block_length
    for i in range(steps_per_block):
      if i == 0 or cache == "none":
        with torch.no_grad():
          out = model(input_ids=x, attention_mask=torch.ones(1, 1, n, n, dtype=torch.bool),
                      position_ids=torch.arange(n)[None], use_cache=True)
        past, q0, logits = out.past_key_values, 0, out.logits
      else:
        q0, q1 = start - shift, (n if cache == "prefix" else end)
        kept = list(range(start)) + ([] if cache == "prefix" else list(range(end, n)))
        mask = torch.ones(1, 1, q1 - q0, len(kept) + q1 - q0, dtype=torch.bool)
        mask[..., len(kept):len(kept) + shift] = False
        with torch.no_grad():
          logits = model(input_ids=x[:, q0:q1], attention_mask=mask,
                         past_key_values=_kept(past, kept),
                         position_ids=torch.arange(q0, q1)[None]).logits
      # the row of logits predicting each block position
      lg = logits[0, torch.arange(start, end) - shift - q0].double()
      x0 = lg.argmax(-1)
      conf = torch.softmax(lg, -1).gather(-1, x0[:, None])[:, 0]
      conf = torch.where(x[0, start:end] == MASK, conf, -torch.inf)
      idx = torch.topk(conf, sched[i]).indices
      x[0, start + idx] = x0[idx]
  out = x[0, p:].tolist()
  cut = next((j for j, t in enumerate(out) if t in stop_ids), len(out) - 1)
  return out[:cut + 1]


# (prompt lengths of one batch, canvas, block, steps per block)
CASES = [((1, 6, 3), 8, 4, 4), ((5, 2, 9), 8, 8, 4), ((4, 7, 2), 12, 4, 2),
         ((3, 8, 5), 8, 2, 1)]


@pytest.mark.parametrize("lens,gen,block,steps", CASES)
def test_greedy_decode_equals_naive_decoder(ckpt, lens, gen, block, steps):
  """Mixed prompt lengths in one batch (left pads), several canvas / block / step
  settings, a common stop id: every row equals the naive decoder on its prompt alone."""
  name, _, model, params, cfg = ckpt
  rng = np.random.RandomState(sum(lens) + gen + block)
  prompts = [rng.randint(30, 290, n).tolist() for n in lens]
  stops = (7, 11)
  dcfg = DecodeConfig(block_size=block, denoising_steps=steps, max_new_tokens=gen,
                      mask_id=MASK, stop_ids=stops, pad_id=0)
  w = max(lens) + 2
  ids = np.zeros((len(lens), w), np.int32)
  for r, p in enumerate(prompts):
    ids[r, :len(p)] = p
  out = make_generate(cfg, dcfg)(params, ids, np.array(lens), jax.random.key(0))
  for r, p in enumerate(prompts):  # Dream's published generate shifts its logits
    want = naive_generate(model, p, gen, block, steps, name == "dream", stops)
    n = int(out["lengths"][r])
    assert np.asarray(out["ids"][r, :n]).tolist() == want, (name, r)
    assert (np.asarray(out["ids"][r, n:]) == 0).all()
    smap = np.asarray(out["step_map"][r, :n])
    assert smap.min() >= 1 and smap.max() <= int(out["nfe"][r])


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("tok")
  train_tiny_bpe(d, texts=gsm8k_texts(limit=200), vocab_size=300)
  return d


def test_api_generate_on_converted_dirs(ckpt, tokenizer_dir, tmp_path):
  """api.load(model dir, decode.block_size=8).generate(ids, tokens_per_forward=2,
  greedy, 16 tokens) on a converted LLaDA / Dream model dir: the mask id is the
  checkpoint's, the tokens the naive decoder's."""
  name, hf, model, _, cfg = ckpt
  local = tmp_path / "hf"
  shutil.copytree(hf, local)
  for f in tokenizer_dir.iterdir():
    shutil.copy2(f, local / f.name)
  convert_hf_to_model_dir(local, tmp_path / "model")
  m = api.load(tmp_path / "model", **{"decode.block_size": 8})
  assert m.ids.mask_id == MASK != m.tokenizer.mask_token_id
  prompt = [40, 41, 42, 43, 44]
  g = m.generate([prompt], tokens_per_forward=2, temperature=0.0, max_new_tokens=16)[0]
  want = naive_generate(model, prompt, 16, 8, 4, name == "dream", m.ids.stop_ids)
  assert g.ids == want
  with pytest.raises(DecodeError, match="not a multiple of block_size"):
    m.generate([prompt], tokens_per_forward=2, max_new_tokens=12)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_caches_equal_a_transformers_kv_cache_reference(ckpt, cache):
  """Prefix and dual cache token for token against the torch reference above (greedy,
  several steps per block, two prompt lengths in one batch); with one step per block
  every cache is the exact decoder."""
  name, _, model, params, cfg = ckpt
  prompts = [[40, 41, 42, 43], [50, 51, 52]]
  ids = np.array([[40, 41, 42, 43], [50, 51, 52, 0]], np.int32)
  lens = np.array([4, 3])

  def run(cache, steps):
    d = DecodeConfig(block_size=4, denoising_steps=steps, max_new_tokens=12, mask_id=MASK,
                     cache=cache)
    return np.asarray(make_generate(cfg, d)(params, ids, lens, jax.random.key(0))["ids"])
  got = run(cache, 4)
  for r, p in enumerate(prompts):
    assert got[r].tolist() == naive_generate(model, p, 12, 4, 4, name == "dream",
                                             cache=cache), r
  np.testing.assert_array_equal(run(cache, 1), run("none", 1))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_sharded_over_data_matches_single_device(ckpt, temperature):
  _, _, _, params, cfg = ckpt
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("data",))
  rng = np.random.RandomState(1)
  lens = rng.randint(1, 7, 8)
  ids = np.zeros((8, 7), np.int32)
  for r, n in enumerate(lens):
    ids[r, :n] = rng.randint(30, 290, n)
  d = DecodeConfig(block_size=4, denoising_steps=2, max_new_tokens=8, mask_id=MASK,
                   temperature=temperature, strategy="random")
  one = make_generate(cfg, d)(params, ids, lens, jax.random.key(3))
  many = make_generate(cfg, d, mesh=mesh)(params, ids, lens, jax.random.key(3))
  for k in one:
    np.testing.assert_array_equal(np.asarray(one[k]), np.asarray(many[k]), err_msg=k)


# --------------------------------------------------------------------------- bad input

def test_unknown_model_type_names_the_families(tmp_path):
  make_llada(tmp_path)
  c = json.loads((tmp_path / "config.json").read_text())
  c["model_type"] = "mamba"
  (tmp_path / "config.json").write_text(json.dumps(c))
  with pytest.raises(ConversionError, match=r"unsupported model_type 'mamba'; supported: "
                     r"qwen3, sdar, llada, Dream"):
    load_params(tmp_path)


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_tensor_not_matching_config_names_it(tmp_path, name):
  MAKERS[name](tmp_path)
  c = json.loads((tmp_path / "config.json").read_text())
  key = "mlp_hidden_size" if name == "llada" else "intermediate_size"
  c[key] = 80
  (tmp_path / "config.json").write_text(json.dumps(c))
  want = ("model.transformer.blocks.0.ff_proj.weight" if name == "llada"
          else "model.layers.0.mlp.gate_proj.weight")
  with pytest.raises(ConversionError, match=f"tensor '{want}' has shape"):
    load_params(tmp_path)


def test_unsupported_llada_option_is_named(tmp_path):
  make_llada(tmp_path)
  c = json.loads((tmp_path / "config.json").read_text())
  c["include_bias"] = True
  (tmp_path / "config.json").write_text(json.dumps(c))
  with pytest.raises(ConversionError, match="include_bias=True is not supported for LLaDA"):
    load_params(tmp_path)


def test_no_mask_token_in_config_or_tokenizer(tmp_path):
  """A LLaDA checkpoint without mask_token_id whose tokenizer has no mask token: one
  line naming the tokenizer dir and both places looked in."""
  import tokenizers
  import transformers
  make_llada(tmp_path, mask_token_id=None)
  vocab = {f"t{i}": i for i in range(300)}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="t0"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="t1",
                                       pad_token="t2").save_pretrained(tmp_path)
  from t3d_jax.errors import InputError
  with pytest.raises(InputError, match="no mask_token_id in the model's config.json"):
    api.load(tmp_path)


def test_dream_needs_a_prompt_token(ckpt):
  name, _, _, params, cfg = ckpt
  d = DecodeConfig(block_size=4, denoising_steps=4, max_new_tokens=4, mask_id=MASK)
  run = make_generate(cfg, d)
  ids, lens = np.zeros((1, 2), np.int32), np.array([0])
  if name == "dream":
    with pytest.raises(DecodeError, match="at least one token"):
      run(params, ids, lens, jax.random.key(0))
  else:
    assert int(run(params, ids, lens, jax.random.key(0))["lengths"][0]) >= 1


def test_a_tokenizer_shipping_its_own_code_is_read_without_it(tmp_path, tokenizer_dir):
  """Dream's tokenizer names its own class (remote code) in auto_map and ships
  vocab.json + merges.txt: t3d_jax reads them with transformers' Qwen2Tokenizer (never
  running the dir's code) and encodes as the same BPE's tokenizer.json does."""
  import transformers
  from t3d_jax.data.tokenizer import load_tokenizer, special_ids
  fast = load_tokenizer(tokenizer_dir)
  fast.backend_tokenizer.model.save(str(tmp_path))  # vocab.json + merges.txt
  cfg = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
  cfg.update(tokenizer_class="DreamTokenizer",
             auto_map={"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]})
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
  (tmp_path / "tokenization_dream.py").write_text("raise SystemExit('remote code ran')\n")
  with pytest.raises(ValueError, match="custom code"):
    transformers.AutoTokenizer.from_pretrained(tmp_path, trust_remote_code=False)
  tok = load_tokenizer(tmp_path)
  assert type(tok).__name__ == "Qwen2Tokenizer"
  for text in ("What is 12+30? <|im_end|>\n\n  foo's", "a<|MASK|>b"):
    assert tok(text, add_special_tokens=False)["input_ids"] == \
        fast(text, add_special_tokens=False)["input_ids"]
  assert special_ids(tok) == special_ids(fast)


def test_cli_convert_rollout_distill_sft_eval_on_llada(tmp_path_factory, tmp_path):
  """The real CLI on a LLaDA checkpoint: convert, rollout (trajectories with step maps
  whose steps count the canvas' forwards, the family recorded), T3D distillation and SFT
  on them, eval at 1, 2 and 4 tokens per forward; trajectories of another family or
  canvas are refused with one line each."""
  from decode_setup import cli, write_questions
  from hf_models import family_model_dir
  family_model_dir(tmp_path_factory.getbasetemp() / "cli_llada", "llada")
  hf = tmp_path_factory.getbasetemp() / "cli_llada" / "hf"
  q = write_questions(tmp_path / "q.jsonl", 3)
  work = tmp_path / "w"
  r = cli("convert", f"--config.hf_dir={hf}", f"--config.workdir={work}")
  assert r.returncode == 0, r.stderr[-3000:]
  flags = (f"--config.workdir={work}", "--config.decode.max_new_tokens=12",
           "--config.decode.max_length=0")
  r = cli("rollout", f"--config.rollout.data={q}", *flags)
  assert r.returncode == 0, r.stderr[-3000:]
  rows = [json.loads(x) for x in (work / "trajectories.jsonl").read_text().splitlines()]
  assert len(rows) == 3
  for row in rows:
    n = row["response_length"][0]
    assert 1 <= n <= 12 and len(row["step_map"][0]) == n and min(row["step_map"][0]) >= 1
  traj = work / "trajectories.jsonl"
  assert json.loads((work / "trajectories.meta.json").read_text())["family"] == "llada"
  small = ("--config.distill.global_batch=2", "--config.distill.micro_batch=2",
           "--config.distill.max_steps=2", "--config.distill.round_interval=1",
           "--config.distill.async_checkpoint=False", "--config.rollout.min_teacher_accuracy=0")
  r = cli("distill", f"--config.distill.data={traj}", *flags, *small)
  assert r.returncode == 0, r.stderr[-3000:]
  assert (work / "distill" / "student" / "model" / "sdar_config.json").is_file()
  r = cli("pretrain", f"--config.pretrain.init={work}/model", f"--config.pretrain.data={q}",
          "--config.pretrain.max_steps=2", "--config.pretrain.global_batch=2",
          "--config.pretrain.micro_batch=2", "--config.pretrain.async_checkpoint=False",
          f"--config.model_dir={tmp_path}/sft", *flags)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "2 updates" in r.stdout
  for edit, extra, line in [
      (dict(family="sdar"), (), f"{traj}: trajectories written by a sdar model, but "),
      ({}, ("--config.decode.max_new_tokens=16",), f"{traj}: decoded on a canvas of 12 "
       "tokens, but decode.max_new_tokens=16")]:
    meta = json.loads((work / "trajectories.meta.json").read_text())
    (work / "trajectories.meta.json").write_text(json.dumps(dict(meta, **edit)))
    r = cli("distill", f"--config.distill.data={traj}", *flags, *small, *extra,
            "--config.distill.name=refused")
    assert r.returncode == 2 and line in r.stderr and "Traceback" not in r.stderr, r.stderr
    (work / "trajectories.meta.json").write_text(json.dumps(meta))
  r = cli("eval", f"--config.eval.data={q}", *flags)
  assert r.returncode == 0, r.stderr[-3000:]
  s = json.loads((work / "eval" / "summary.json").read_text())
  assert sorted(x["tokens_per_forward"] for x in s["results"]) == [1, 2, 4]


def test_decode_memory_presets_are_the_published_sizes():
  """The presets of `bench memory --decode` build the published architectures: LLaDA-8B
  8.02B params, Dream-7B 7.62B (Qwen2.5-7B's count)."""
  import flax.linen as nn
  from t3d_jax.bench.decode_memory import model_of
  from t3d_jax.convert import count_params
  sizes = {}
  for name in ("llada-8b", "dream-7b"):
    cfg = model_of(name)
    sizes[name] = count_params(nn.unbox(models.abstract_params(cfg))) / 1e9
  assert families.of_config(model_of("llada-8b")).name == "llada"
  assert abs(sizes["llada-8b"] - 8.02) < 0.01 and abs(sizes["dream-7b"] - 7.62) < 0.01, sizes


def test_sharded_load_equals_host_load(ckpt):
  """load_params_sharded reads a LLaDA / Dream HF dir straight into the shardings of an
  (fsdp=4, tensor=2) mesh: the same values as the host load."""
  from t3d_jax import sharding
  from t3d_jax.convert import load_params_sharded
  _, d, _, params, cfg = ckpt
  mesh = sharding.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
  got, got_cfg = load_params_sharded(d, mesh, sharding.DEFAULT_RULES)
  assert got_cfg == cfg
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(got)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))
  assert any(len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated
             for x in jax.tree.leaves(got))


def test_sampled_rows_do_not_depend_on_their_batch(ckpt):
  """At temperature 1 with per-row keys, a row decodes the same alone, beside other rows
  and at another padding width (the traced knobs: one compilation per shape)."""
  _, _, _, params, cfg = ckpt
  from t3d_jax.sampling.steps import row_keys
  d = DecodeConfig(block_size=4, denoising_steps=2, max_new_tokens=8, mask_id=MASK,
                   temperature=1.0, strategy="low_confidence_dynamic", threshold=0.5)
  run = make_generate(cfg, d)
  ids = np.array([[40, 41, 42, 0, 0], [50, 51, 52, 53, 54]], np.int32)
  both = run(params, ids, np.array([3, 5]), row_keys(jax.random.key(5), [0, 1]))
  alone = run(params, np.pad(ids[:1], ((0, 0), (0, 3))), np.array([3]),
              row_keys(jax.random.key(5), [0]))
  for k in both:
    np.testing.assert_array_equal(np.asarray(both[k])[:1], np.asarray(alone[k]), err_msg=k)
