"""experiments/tiny_latent.py end to end on tiny random parts (tests/partskit.py): Qwen2 +
SigLIP + AutoencoderKL imported, trained on JSONL documents with PNG image files on 8
simulated devices with FSDP (latents encoded in the input step), resumed, sampled to PNGs of
the VAE's output size, evaluated, exported to PyTorch and checked against the JAX model. The
"qwen_tok" parts carry a Qwen-style qwen2/tokenizer.json, which the run must use as its own."""

import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("diffusers")

# pylint: disable=g-import-not-at-top,wrong-import-position
from mogao_jax import config_args
from mogao_jax.convert import vae as vae_convert
from mogao_jax.data import batch as batch_lib
from mogao_jax.data import pipeline
from mogao_jax.model.mogao import Mogao
from mogao_jax.sample import load
from mogao_jax.train import loop
from mogao_jax.train import restore
from tests import convertkit, partskit
from tests.configs import REPO

pytestmark = pytest.mark.slow
EXPERIMENT = REPO / "experiments" / "tiny_latent.py"
RTOL = 1e-4  # torch export vs JAX, as tests/test_convert_export.py


def _config(parts, source, steps, shape="default"):
  c = config_args.load_experiment(EXPERIMENT).get_config(f"parts={parts}")
  c.data.source = source
  c.mesh.shape.update({"data": 1, "fsdp": -1, "tensor": 1})
  c.train.update(dict(steps=steps, log_every=1, ckpt_every=2))
  c.optim.warmup_steps = 1
  return c


def _run(args, **kw):
  r = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True,
                     timeout=600, **kw)
  assert r.returncode == 0, r.stderr[-3000:]
  return r.stdout


@pytest.fixture(scope="module", params=["default", "other", "qwen_tok"])
def run(request, tmp_path_factory):
  """Parts, data and a trained + resumed workdir (4 steps, then 2 more)."""
  root = tmp_path_factory.mktemp(f"latent_{request.param}")
  parts = partskit.write_parts(str(root / "parts"), partskit.SHAPES[request.param],
                               tokenizer=request.param == "qwen_tok")
  probe = config_args.load_experiment(EXPERIMENT).get_config(f"parts={parts}")
  source = partskit.write_world_jsonl(str(root / "data"), 48, probe.data.image_size)
  wd = str(root / "wd")
  first = loop.train(_config(parts, source, 4), wd)
  more = _config(parts, source, 6)
  more.train.allow_config_change = True  # extending train.steps on resume must be said
  resumed = loop.train(more, wd)
  return request.param, parts, source, wd, first, resumed


def test_trains_on_jsonl_images_with_fsdp_and_resumes(run):
  _, _, _, wd, first, resumed = run
  assert jax.device_count() == 8
  assert [r["step"] for r in first] == [1, 2, 3, 4]
  assert [r["step"] for r in resumed] == [5, 6]  # continued from the step-4 checkpoint
  for r in first + resumed:
    assert np.isfinite(r["loss"]) and r["flow_loss"] > 0 and r["text_loss"] > 0
  report = open(os.path.join(wd, "init_report.txt")).read()
  assert "[init.text]" in report and "[init.vit]" in report
  steps = [json.loads(line)["step"] for line in open(os.path.join(wd, "metrics.jsonl"))]
  assert steps == [1, 2, 3, 4, 5, 6]


def test_samples_an_interleaved_document_decoded_by_the_vae(run, tmp_path):
  _, parts, _, wd, _, _ = run
  config = json.load(open(os.path.join(wd, "config.json")))
  size = config["data"]["image_size"]
  ctx = tmp_path / "in.png"
  Image.fromarray(np.full((size, size, 3), 120, np.uint8)).save(ctx)
  out = tmp_path / "gen"
  _run(["mogao_jax.generate", "--workdir", wd, "--prompt", "a red circle", "--image", str(ctx),
        "--force_image", "--max_tokens", "4", "--out", str(out)])
  pngs = sorted(glob.glob(str(out / "img" / "*gen*.png")))
  assert pngs, os.listdir(out / "img")
  for p in pngs:
    assert Image.open(p).size == (size, size)  # the VAE decoder's output: 2^k x the latents


def test_evaluates(run, tmp_path):
  _, _, _, wd, _, _ = run
  out = _run(["mogao_jax.evaluate", "--workdir", wd, "--n_per_category", "1",
              "--kinds", "t2i,edit,story", "--out", str(tmp_path / "eval")])
  for kind in ("t2i", "edit", "story"):
    assert f"{kind}" in out


def test_torch_export_matches_jax(run, tmp_path):
  _, _, _, wd, _, _ = run
  out = str(tmp_path / "torch")
  _run(["mogao_jax.export", "--workdir", wd, "--format", "torch", "--out", out])
  config, params, _, tok = load.load(wd)
  batch = next(pipeline.make_pipeline(config, tok, split="train"))
  codec = vae_convert.codec_for(config)
  batch = {k: np.asarray(v) for k, v in jax.jit(codec.fill_latents)(codec.params, batch).items()}
  assert np.abs(batch["vis_latent"]).max() > 0  # the VAE's latents are in the vision slots
  rng = np.random.default_rng(0)
  nvae = batch["vis_kind"] == 4
  t_img = rng.uniform(0.05, 0.95, (nvae.shape[0], batch["txt_kind"].shape[1] + nvae.shape[1] + 1))
  vis_t = np.where(nvae, np.take_along_axis(t_img, batch["vis_image"], 1), 1.0  # one t per image
                   ).astype(np.float32)
  inputs = batch_lib.model_inputs(batch)
  logits_j, vel_j = jax.jit(Mogao.from_config(config).apply)({"params": params}, inputs, vis_t)
  spec = importlib.util.spec_from_file_location("exported_latent_model", f"{out}/torch_model.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  tm = mod.Mogao.from_dir(out)
  logits_t, vel_t = tm({k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()},
                       torch.from_numpy(vis_t))
  for j, t, real in ((logits_j, logits_t, batch["txt_segment"] > 0),
                     (vel_j, vel_t, batch["vis_segment"] > 0)):
    assert convertkit.rel_err(t.numpy()[real], np.asarray(j)[real]) <= RTOL


def test_parts_tokenizer_is_the_runs(run, tmp_path):
  """The parts' tokenizer.json is the run's (workdir and checkpoint), its ids are transformers'
  own on the run's documents, and sampled text decodes without unknown pieces."""
  name, parts, source, wd, _, _ = run
  if name != "qwen_tok":
    pytest.skip("these parts hold no tokenizer.json")
  import transformers  # pylint: disable=g-import-not-at-top
  qwen = os.path.join(parts, "qwen2")
  assert sorted(f for f in os.listdir(wd) if f.startswith("tokenizer")) == [
      "tokenizer.json", "tokenizer_config.json"]
  want = open(os.path.join(qwen, "tokenizer.json"), "rb").read()
  assert open(os.path.join(wd, "tokenizer.json"), "rb").read() == want
  tok = restore.load_tokenizer(wd)
  ref = transformers.AutoTokenizer.from_pretrained(qwen)
  lines = [json.loads(x) for x in open(source.split("?")[0][len("jsonl:"):])]
  texts = [p["text"] for d in lines for p in d["parts"] if p["type"] == "text"][:40]
  for text in texts + partskit.EXTRA_TEXT:
    assert tok.encode(text) == ref(text, add_special_tokens=False).input_ids, text
  assert tok.img_open_id == ref.convert_tokens_to_ids("<|vision_start|>")
  # the checkpoint alone carries it (the item's main bytes are the tokenizer.json)
  bare = tmp_path / "bare"
  shutil.copytree(wd, bare)
  for f in ("tokenizer.json", "tokenizer_config.json"):
    os.remove(bare / f)
  assert restore.load_tokenizer(str(bare)).files == tok.files
  out = tmp_path / "text"
  _run(["mogao_jax.generate", "--workdir", wd, "--prompt", "Café 42: a red circle",
        "--max_tokens", "12", "--out", str(out)])
  html = open(out / "index.html", encoding="utf-8").read()
  assert "Café 42: a red circle" in html and "\u2047" not in html  # no unknown-piece mark
