"""`python -m mogao_jax.evaluate`: the scorer path on ground truth, and end to end on a tiny
randomly initialised checkpoint."""

import json
import os
import subprocess
import sys

import jax
import pytest

from mogao_jax import evaluate
from mogao_jax.data import pipeline
from mogao_jax.sample import sampling
from mogao_jax.train import checkpoint as ckpt_lib
from mogao_jax.train import optimizer as optim_lib
from mogao_jax.train import step
from mogao_jax.model.mogao import Mogao
from mogao_jax.data import batch as batch_lib
from tests.configs import REPO, tiny_config

KINDS = ("t2i", "edit", "story", "vqa", "caption")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A training workdir with a random-init checkpoint of the test-sized model."""
  path = str(tmp_path_factory.mktemp("run"))
  c = tiny_config()
  # The scorer reads the world's resolutions (32 px and up): 32 px images of 8 px patches keep
  # the test model's 16 patches per image. A 2-step story needs 16 + 16 + 16 vision slots.
  c.data.update(dict(image_size=32, patch_size=8, l_vis=96))
  c.model.update(dict(patch_dim=192, latent_dim=192))
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(ckpt_lib.config_to_json(c), f)
  pipeline.make_tokenizer(c, path)
  model = Mogao.from_config(c)
  tx, _ = optim_lib.make_optimizer(c)
  state = step.init_state(c, model, tx, jax.random.key(0), batch_lib.example_batch(c, 1))
  with ckpt_lib.Checkpointer(path, c) as ckpt:
    ckpt.save(1, state, {}, c)
    ckpt.save(3, state, {}, c)
  return path


def test_ground_truth_scores_one_everywhere(workdir, tmp_path):
  res = evaluate.evaluate(workdir, n_per_category=1, ground_truth=True, out=str(tmp_path))
  assert set(res["summary"]) == set(KINDS)
  for kind, s in res["summary"].items():
    assert s["overall"] == 1.0, (kind, s)
  assert os.path.exists(tmp_path / "eval.json") and os.path.exists(tmp_path / "index.html")
  with open(tmp_path / "eval.json") as f:
    attrs = json.load(f)["summary"]["t2i"]["attributes"]
  assert list(attrs) == ["count", "colour", "position", "shape", "size"]
  assert all(a["acc"] == 1.0 and a["n"] >= 1 for a in attrs.values()), attrs
  assert "attribute: colour" in open(tmp_path / "index.html").read()
  assert {k: s["partial"] for k, s in res["summary"].items() if "partial" in s} == {
      "caption": 1.0, "edit": 1.0, "story": 1.0}


@pytest.mark.slow  # a second evaluation run: keeps the default suite inside its 20 minutes
def test_evaluate_an_earlier_checkpoint(workdir, tmp_path):
  res = evaluate.evaluate(workdir, n_per_category=1, kinds=["vqa"], max_tokens=2, step=1,
                          out=str(tmp_path))
  assert res["step"] == 1 and set(res["summary"]) == {"vqa"}


def test_attributes_line():
  s = {"attributes": {"colour": {"acc": 0.4, "n": 40}, "count": {"acc": 0.55, "n": 140}}}
  assert evaluate.attributes_line("t2i", s) == (
      "t2i      attributes  colour 0.400 (n 40)  count 0.550 (n 140)")
  assert evaluate.attributes_line("vqa", {"overall": 1.0}) is None


@pytest.mark.slow  # the evaluate entry point end to end: keeps the default suite inside its 20 minutes
def test_evaluate_random_checkpoint_end_to_end(workdir):
  sc = sampling.SampleConfig(steps=2, g_txt=2.0, g_img=1.5)  # the guided path, end to end
  res = evaluate.evaluate(workdir, n_per_category=1, max_tokens=6,
                          sampler_kwargs=dict(sc=sc, batch_size=8))
  out = os.path.join(workdir, "eval", "step_3")
  with open(os.path.join(out, "eval.json")) as f:
    saved = json.load(f)
  assert saved["step"] == 3 and saved["mode"] == "model"
  assert set(saved["summary"]) == set(KINDS)
  for s in saved["summary"].values():
    assert 0.0 <= s["overall"] <= 1.0
  assert all(0.0 <= a["acc"] <= 1.0 for a in saved["summary"]["t2i"]["attributes"].values())
  assert all("attrs" in r for r in saved["items"] if r["kind"] == "t2i")
  assert len(saved["items"]) == len(res["items"]) > len(KINDS)
  html = open(os.path.join(out, "index.html")).read()
  assert html.count("<img") >= 2 * sum(s["n"] for k, s in saved["summary"].items()
                                       if k in ("t2i", "edit"))


def test_an_unreadable_workdir_ends_with_its_message_alone(tmp_path):
  (tmp_path / "checkpoints").mkdir()  # a workdir whose run never saved
  out = subprocess.run([sys.executable, "-m", "mogao_jax.evaluate", "--workdir", str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
  assert out.returncode == 1
  assert out.stderr.strip().splitlines()[-1].startswith("error: --workdir = ")
  assert "no complete checkpoint there" in out.stderr
  assert "Traceback" not in out.stderr  # neither ours nor an orbax thread's
