"""Sharded inference: params restored by orbax onto an FSDP mesh of the 8 simulated devices,
the sampler run under it, give the single-device results on a fixed seed (tokens equal,
images within a stated tolerance), for generation and for the evaluation."""

import json
import os

import jax
import numpy as np
import pytest

pytestmark = pytest.mark.slow  # ~3 min on the shared 2-core host (two samplers' compiles)

from mogao_jax import evaluate
from mogao_jax.data import documents, pipeline
from mogao_jax.sample import engine, load, sampling
from mogao_jax.train import checkpoint as ckpt_lib
from mogao_jax.train import optimizer as optim_lib
from tests import convertkit
from tests.configs import tiny_config

FSDP = "data=1,fsdp=8"
# Pixels are the decoded uint8 images. FSDP all-gathers the weights, so the maths is the same
# but XLA may fuse / order the float32 sums differently: a pixel may land one level off at a
# rounding edge. Measured: identical on this host (max difference 0).
MAX_PIXEL_DIFF = 1


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A workdir with a perturbed (every weight matters) checkpoint of the test-sized model,
  saved with its optimizer state as training saves it."""
  path = str(tmp_path_factory.mktemp("run"))
  c = tiny_config()
  c.data.update(dict(image_size=32, patch_size=8, l_vis=96))  # the eval world's 32 px images
  c.model.update(dict(patch_dim=192, latent_dim=192))
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(ckpt_lib.config_to_json(c), f)
  pipeline.make_tokenizer(c, path)
  tx, _ = optim_lib.make_optimizer(c)
  _, state = convertkit.init_state(c, tx, perturb=True)
  with ckpt_lib.Checkpointer(path, c) as ckpt:
    ckpt.save(2, state, {}, c)
  return path


def _scripts():
  return [[documents.Text("a red circle"), engine.Gen(), engine.Decode(4)],
          [documents.Text("how many squares ?"), engine.Decode(6, images=False)]] * 4


def _sample(workdir, mesh):
  config, params, _, tok, placement = load.load_on_mesh(workdir, mesh=mesh)
  sc = sampling.SampleConfig(steps=3, g_txt=2.0, g_img=1.5, temperature=1.0, top_k=20)
  s = engine.Sampler.from_config(config, params, tok, max_tokens=8, batch_size=8, sc=sc,
                                 placement=placement)
  return s, s.run(_scripts())


def _split(docs):
  texts = [[p.text for _, p in d if isinstance(p, documents.Text)] for d in docs]
  images = [np.stack([p.pixels for _, p in d if isinstance(p, documents.Image)])
            for d in docs if any(isinstance(p, documents.Image) for _, p in d)]
  return texts, images


@pytest.fixture(scope="module")
def sampled(workdir):
  single = _sample(workdir, load.SINGLE)
  sharded = _sample(workdir, FSDP)
  return single, sharded


def test_params_and_cache_are_sharded_over_the_mesh(sampled):
  _, (s, _) = sampled
  assert dict(s.placement.mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1}
  specs = [x.sharding.spec for x in jax.tree.leaves(s.params)]
  assert all(len(x.sharding.device_set) == 8 for x in jax.tree.leaves(s.params))
  assert sum("fsdp" in str(sp) for sp in specs) > len(specs) // 2, specs  # FSDP, not replicas
  # The cache: rows over the batch axes (data x fsdp = 8 ways), kv heads on tensor (absent).
  assert "fsdp" in str(s.cache.k.sharding.spec[1])  # (data is size 1, dropped from the spec)
  assert s.cache.k.addressable_shards[0].data.shape[1] == 1


def test_sharded_generation_equals_single_device(sampled):
  (_, single), (_, sharded) = sampled
  t1, i1 = _split(single)
  t2, i2 = _split(sharded)
  assert t1 == t2 and any(t for t in t1), (t1, t2)  # sampled text, token for token
  assert len(i1) == len(i2) == 4
  for a, b in zip(i1, i2):
    diff = np.abs(a.astype(int) - b.astype(int))
    print("pixel difference: max", diff.max(), "fraction off", (diff > 0).mean())
    assert diff.max() <= MAX_PIXEL_DIFF, diff.max()
    assert (diff > 0).mean() < 0.01  # at most the odd rounding edge


def test_sharded_evaluation_equals_single_device(workdir, tmp_path):
  kw = dict(n_per_category=1, kinds=["t2i", "vqa"], max_tokens=4,
            sampler_kwargs=dict(sc=sampling.SampleConfig(steps=2), batch_size=8))
  one = evaluate.evaluate(workdir, out=str(tmp_path / "one"), mesh=load.SINGLE, **kw)
  fsdp = evaluate.evaluate(workdir, out=str(tmp_path / "fsdp"), mesh=FSDP, **kw)
  assert one["mesh"] == "single" and fsdp["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
  assert fsdp["summary"] == one["summary"]
  strip = lambda items: [{k: v for k, v in r.items() if k != "seconds"} for r in items]  # noqa
  assert strip(fsdp["items"]) == strip(one["items"])


def test_bad_mesh_flag_is_named():
  with pytest.raises(ValueError, match="--mesh='fsdp'"):
    load.parse_mesh("fsdp")
  assert load.parse_mesh("data=1,fsdp=-1") == (("data", 1), ("fsdp", -1))


def test_batch_that_does_not_split_over_the_mesh_is_refused(workdir):
  config, params, _, tok, placement = load.load_on_mesh(workdir, mesh=FSDP)
  with pytest.raises(ValueError, match="--batch_size=3 rows do not split .* multiple of 8"):
    engine.Sampler.from_config(config, params, tok, batch_size=3, placement=placement)
