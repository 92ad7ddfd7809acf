"""Exports usable without mogao_jax: the tokenizer files AutoTokenizer loads (encoding exactly
as the run's tokenizer), and the torch export's own sampler (torch_generate.py) against the
JAX sampler on the same prompt and noise; the hf-qwen2 export's greedy text against it too."""

import importlib.util
import json
import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# pylint: disable=g-import-not-at-top,wrong-import-position
import tokenizers
from mogao_jax import export as export_lib
from mogao_jax.convert import tokenizer_export
from mogao_jax.data import documents, hf_tokenizer, pipeline
from mogao_jax.data import tokenizer as tokenizer_lib
from mogao_jax.sample import engine, load, sampling
from mogao_jax.train import checkpoint as ckpt_lib
from mogao_jax.train import optimizer as optim_lib
from tests import convertkit, partskit
from tests.configs import tiny_config

TEXTS = ["a red circle left of 3 blue squares", "  Héllo Wörld 1234  ÉÀ çà ",
         "猫は<img>かわいい</img> 東京 2024", "ＡＢＣ１２３ full-width", "x  y\tz\n w",
         "What is the colour of the Big square?", "naïve café résumé", "<img> x", "", "  "]
# The generated image's uint8 pixels: the same float32 maths in torch and XLA, summed in a
# different order; over 3 guided Euler steps a pixel may round one level the other way.
MAX_PIXEL_DIFF = 1


def _world_tokenizer(tmp_path, vocab=1000):
  c = tiny_config()
  c.data.vocab_size, c.model.vocab_size = vocab, 1024
  return pipeline.make_tokenizer(c, str(tmp_path))


def test_sentencepiece_export_encodes_as_the_run(tmp_path):
  tok = _world_tokenizer(tmp_path / "run")
  tokenizer_export.write(str(tmp_path / "out"), tok.model_proto)
  hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
  assert len(hf) == tok.vocab_size
  assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (tok.bos_id, tok.eos_id, 0)
  assert hf.convert_tokens_to_ids(["<img>", "</img>"]) == [tok.img_open_id, tok.img_close_id]
  for text in TEXTS:
    ids = hf.encode(text)
    assert ids == tok.encode(text), text
    if 1 not in ids:  # <unk> decodes differently (sentencepiece: " ⁇ ")
      assert hf.decode(ids) == tok.decode(ids), text


def test_hf_tokenizer_json_is_copied_with_its_special_tokens(tmp_path):
  bpe = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token=None))
  bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  bpe.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=300, special_tokens=["<|pad|>", "<|bos|>", "<|eos|>", "<img>", "</img>"],
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  bpe.train_from_iterator(["a red circle left of a blue square"] * 20 + TEXTS, trainer)
  src = tmp_path / "src"
  src.mkdir()
  bpe.save(str(src / "tokenizer.json"))
  (src / "tokenizer_config.json").write_text(json.dumps(
      {"pad_token": "<|pad|>", "bos_token": "<|bos|>", "eos_token": "<|eos|>"}))
  run = tokenizer_lib.from_files(hf_tokenizer.read_files(
      str(src), {"img_open": "<img>", "img_close": "</img>"}, "data.tokenizer"))
  tokenizer_export.write(str(tmp_path / "out"), run.model_proto, run.config_bytes)
  hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
  assert (hf.bos_token, hf.eos_token, hf.pad_token) == ("<|bos|>", "<|eos|>", "<|pad|>")
  for text in TEXTS:  # a typed <img> is text to the run, and so to the export
    assert hf.encode(text) == run.encode(text), text
    assert hf.decode(hf.encode(text)) == text


def _save_perturbed_run(c, wd: str) -> None:
  """A workdir of config `c`: config.json, its tokenizer and a step-1 checkpoint of perturbed
  parameters (every weight matters)."""
  with open(os.path.join(wd, "config.json"), "w") as f:
    json.dump(ckpt_lib.config_to_json(c), f)
  pipeline.make_tokenizer(c, wd)
  _, state = convertkit.init_state(c, optim_lib.make_optimizer(c)[0], perturb=True)
  with ckpt_lib.Checkpointer(wd, c) as ckpt:
    ckpt.save(1, state, {}, c)


@pytest.fixture(scope="module")
def run(tmp_path_factory):  # ~40 s; the tests that take it are slow (~2.5 min in all)
  """A workdir with a perturbed checkpoint (every weight matters) of a test-sized model that
  both exports take (Qwen2 attention: q/k/v bias, no qk norm), exported both ways."""
  wd = str(tmp_path_factory.mktemp("run"))
  c = tiny_config()
  c.model.update(dict(qkv_bias=True, qk_norm=False, tie_embeddings=False))
  _save_perturbed_run(c, wd)
  out = {f: str(tmp_path_factory.mktemp(f)) for f in ("torch", "hf-qwen2")}
  for fmt, path in out.items():
    export_lib.export(wd, fmt, path)
  return wd, out


def _torch_generate(path):
  spec = importlib.util.spec_from_file_location("exported_torch_generate",
                                                f"{path}/torch_generate.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)  # the copy next to the weights: self-contained
  return mod


def _hf_tokenizer(path, fmt):
  """AutoTokenizer, except on hf-qwen2 with a sentencepiece run: transformers 5 loads every
  model_type=qwen2 directory as its byte-level Qwen2Tokenizer (a hard-coded pipeline, whatever
  tokenizer_config.json says), so there the generic fast class loads the files as written."""
  if fmt == "hf-qwen2":
    return transformers.PreTrainedTokenizerFast.from_pretrained(path)
  return transformers.AutoTokenizer.from_pretrained(path)


@pytest.mark.slow
def test_exports_ship_the_run_tokenizer(run):
  wd, out = run
  _, _, _, tok = load.load(wd)
  for fmt, path in out.items():
    hf = _hf_tokenizer(path, fmt)
    assert [hf.encode(t) for t in TEXTS] == [tok.encode(t) for t in TEXTS], fmt
  with open(os.path.join(out["torch"], "generation.json")) as f:
    g = json.load(f)
  assert (g["bos_id"], g["img_open_id"], g["codec"]) == (tok.bos_id, tok.img_open_id, "pixels")


PROMPT = "a red circle left of a blue square"
SC = sampling.SampleConfig(steps=3, shift=3.0, g_txt=2.0, g_img=1.5)


@pytest.mark.slow
def test_torch_generate_matches_the_jax_sampler(run):
  wd, out = run
  config, params, _, tok = load.load(wd)
  s = engine.Sampler.from_config(config, params, tok, max_tokens=6, batch_size=1, sc=SC)
  jax_doc = [(r, p) for r, p in s.run([[documents.Text(PROMPT), engine.Gen(),
                                        engine.Decode(6)]])[0] if r == "gen"]
  n = s.n_latent
  noise = [np.asarray(s.image_noise([0], [k], n))[0] for k in range(4)]
  gen = _torch_generate(out["torch"]).Generator(out["torch"])
  torch_doc = gen.generate(PROMPT, image=True, max_tokens=6, noise=noise, steps=SC.steps,
                           shift=SC.shift, g_img=SC.g_img, g_txt=SC.g_txt)
  assert [k for k, _ in torch_doc] == [
      "image" if isinstance(p, documents.Image) else "text" for _, p in jax_doc]
  assert any(k == "text" for k, _ in torch_doc)  # the perturbed model writes something
  for (kind, ours), (_, theirs) in zip(torch_doc, jax_doc):
    if kind == "text":
      assert ours == theirs.text
    else:
      diff = np.abs(ours.astype(int) - theirs.pixels.astype(int))
      print(f"torch vs JAX image: max pixel difference {diff.max()}, "
            f"{(diff > 0).mean():.4f} of pixels differ")
      assert diff.max() <= MAX_PIXEL_DIFF and (diff > 0).mean() < 0.01


@pytest.mark.slow
def test_hf_qwen2_greedy_text_matches_the_jax_sampler(run):
  wd, out = run
  config, params, _, tok = load.load(wd)
  s = engine.Sampler.from_config(config, params, tok, max_tokens=8, batch_size=1, sc=SC)
  jax_text = [p.text for r, p in s.run([[documents.Text(PROMPT),
                                         engine.Decode(8, images=False)]])[0] if r == "gen"]
  hf_tok = _hf_tokenizer(out["hf-qwen2"], "hf-qwen2")
  model = transformers.AutoModelForCausalLM.from_pretrained(out["hf-qwen2"]).eval()
  ids = torch.tensor([[hf_tok.bos_token_id] + hf_tok.encode(PROMPT)])
  with torch.no_grad():
    new = model.generate(ids, max_new_tokens=8, do_sample=False,
                         eos_token_id=[tok.eos_id, tok.img_open_id],
                         pad_token_id=0)[0, ids.shape[1]:].tolist()
  new = [i for i in new if i not in (tok.eos_id, tok.img_open_id, tok.bos_id, 0,
                                     tok.img_close_id)]
  assert new and [tok.decode(new)] == jax_text


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
  """As `run`, with images through a tiny random diffusers VAE (latents 4 x 8 x 8 of a 16 px
  image, patchified 2 x 2: 16 slots of 16), exported to torch."""
  root = tmp_path_factory.mktemp("vae_run")
  vae = partskit.write_vae(str(root / "vae"))
  c = tiny_config()
  c.data.update(dict(latents="precomputed", vae=vae, latent_patch=2, latent_channels=4))
  c.model.update(dict(latent_dim=16))
  wd = str(root / "run")
  os.makedirs(wd)
  _save_perturbed_run(c, wd)
  out = str(root / "torch")
  export_lib.export(wd, "torch", out)
  return wd, out


@pytest.mark.slow
def test_torch_generate_with_the_vae_matches_the_jax_sampler(vae_run):
  wd, out = vae_run
  assert sorted(os.listdir(os.path.join(out, "vae"))) == [
      "config.json", "diffusion_pytorch_model.safetensors"]
  config, params, _, tok = load.load(wd)
  s = engine.Sampler.from_config(config, params, tok, max_tokens=3, batch_size=1, sc=SC)
  jax_img = [p for r, p in s.run([[documents.Text(PROMPT), engine.Gen()]])[0] if r == "gen"]
  noise = np.asarray(s.image_noise([0], [0], s.n_latent))[0]
  gen = _torch_generate(out).Generator(out)
  assert gen.g["codec"] == "vae" and gen.g["latent_grid"] == [4, 4]
  mod = _torch_generate(out)
  doc = mod.Document(*gen.model_dims())
  doc.tokens([tok.bos_id, *tok.encode(PROMPT), tok.img_open_id])
  ours = gen.image(doc, noise, steps=SC.steps, shift=SC.shift, g_img=SC.g_img, g_txt=SC.g_txt)
  theirs = jax_img[0].pixels
  assert ours.shape == theirs.shape == (16, 16, 3)
  diff = np.abs(ours.astype(int) - theirs.astype(int))
  print(f"torch vs JAX image through the VAE: max pixel difference {diff.max()}, "
        f"{(diff > 0).mean():.4f} of pixels differ")
  assert diff.max() <= MAX_PIXEL_DIFF and (diff > 0).mean() < 0.01


@pytest.mark.slow
def test_torch_generate_runs_without_mogao_jax_or_jax(run):
  """The torch export in a fresh, isolated interpreter (python -I: no PYTHONPATH, so no
  mogao_jax), from its own directory: a prompt gives an image and ends; nothing of JAX loads."""
  import subprocess
  import sys
  _, out = run
  script = ("import sys; sys.path.insert(0, '.'); from torch_generate import Generator; "
            "doc = Generator('.').generate('a red circle', image=True, max_tokens=3, steps=2); "
            "print([k for k, _ in doc][0], doc[0][1].shape); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'mogao_jax')))")
  r = subprocess.run([sys.executable, "-I", "-c", script], cwd=out["torch"],
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.split("\n")[:2] == ["image (16, 16, 3)", "[]"], r.stdout


def test_qwen_tokenizer_export_encodes_as_the_run_through_autotokenizer(tmp_path):
  """A run on a Qwen-style tokenizer.json (byte-level BPE + Qwen2.5's added tokens), exported
  beside a model_type=qwen2 config.json as hf-qwen2 writes it: AutoTokenizer (transformers'
  own Qwen2 class) encodes every text as the run did, a typed added token included (the run
  reads it as plain text; the export sets split_special_tokens against Qwen2.5's false)."""
  src = tmp_path / "qwen2"
  partskit.write_qwen_tokenizer(str(src))
  tok = tokenizer_lib.from_files(hf_tokenizer.read_files(str(src), {}, "data.tokenizer"))
  out = tmp_path / "out"
  tokenizer_export.write(str(out), tok.model_proto, tok.config_bytes)
  (out / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
  hf = transformers.AutoTokenizer.from_pretrained(str(out))
  texts = TEXTS + ["a <|vision_start|> b <|endoftext|> c <|im_start|>"]
  assert [hf.encode(t) for t in texts] == [tok.encode(t) for t in texts]
  assert hf.eos_token_id == tok.eos_id
