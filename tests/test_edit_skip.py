"""model.edit_skip (model/edit_skip.py): an NVAE slot's input gets a zero-initialised projection
of its source image's clean latent at the same (H, W) cell; off by default.

Checked on an encoded, packed row of an edit document (two same-grid context images and one
of another grid before the target) and a t2i document: the skip at init is the model without
it, exactly; with identity-like weights the target's slots receive the most recent same-grid
source's clean patch at their own cell, t2i slots nothing; the sampler adds the same skip
during generation; the PyTorch export (torch_model.py, torch_generate.py) does the same."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mogao_jax import config_args
from mogao_jax.convert import torch_export
from mogao_jax.data import documents, encoding, images, packing
from mogao_jax.data.batch import Kind
from mogao_jax.model import flow
from mogao_jax.model.mogao import Mogao
from mogao_jax.sample import engine, sampling, slots
from tests import modelkit
from tests.configs import TINY_CPU, tiny_config
from tests.test_sample import FakeTokenizer

PATCH, L = 4, 64  # the row of tiny_config, so the sampler's full forward shares its compile
TOL = 2e-5  # cached vs full forward, as tests/test_sample.py


def _px(seed, h=16, w=16):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


SRC1, SRC2, NARROW, TARGET, T2I = _px(1), _px(2), _px(3, 8, 16), _px(4), _px(5, 8, 8)


def _row(tok):
  """One packed row: segment 1 an edit (SRC1, SRC2 and an 8 x 16 image as context, then the
  generated TARGET), segment 2 a t2i document."""
  edit = documents.Document([
      documents.Text("ab"), documents.Image(SRC1), documents.Text("cd"),
      documents.Image(SRC2), documents.Text("e"), documents.Image(NARROW),
      documents.Text("mk"), documents.Image(TARGET, generate=True)])
  t2i = documents.Document([documents.Text("d"), documents.Image(T2I, generate=True)])
  packer = packing.TwoStreamPacker(L, L, 48, 48)
  for doc in (edit, t2i):
    packer.place(encoding.encode_document(doc, tok, PATCH), 0, 0)
  return {k: v[None] for k, v in packer.pop_oldest().items()}


@pytest.fixture(scope="module")
def setup():
  # tests/test_sample.py's params (the same init program: one compile in a suite run) plus
  # the skip's kernel at its init, zero
  base = tiny_config()
  params = modelkit.perturbed_params(base, Mogao.from_config(base))
  params = {**params, "edit_skip": {"kernel": jnp.zeros((48, base.model.width))}}
  c_off = base.copy_and_resolve_references()
  c_off.model.vis_images = 6  # the row's 5 images with vision copies
  c = c_off.copy_and_resolve_references()
  c.model.edit_skip = True
  model = Mogao.from_config(c)
  batch = _row(FakeTokenizer())
  rng = np.random.default_rng(0)
  t_BN = jnp.asarray(rng.uniform(0.1, 0.9, (1, L + L + 1)), jnp.float32)
  noise = jnp.asarray(rng.normal(size=batch["vis_latent"].shape), jnp.float32)
  inputs, t_BV, _ = flow.apply_noise(batch, t_BN, noise)
  return c, model, Mogao.from_config(c_off), params, batch, inputs, t_BV, jax.jit(model.apply)


def _with_kernel(params, kernel):
  return {**params, "edit_skip": {"kernel": jnp.asarray(kernel, jnp.float32)}}


def test_zero_skip_is_the_model_without_it_exactly(setup):
  _, model, model_off, params, _, inputs, t_BV, fwd = setup
  # the params are the model's: those of the option off plus the skip's one kernel
  want = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), inputs, t_BV)["params"])
  assert jax.tree.map(jnp.shape, want) == jax.tree.map(jnp.shape, params)
  init = model.init(jax.random.key(0), jnp.ones((1, 2, 48)), method=lambda m, x: m.edit_skip(x))
  np.testing.assert_array_equal(nn.meta.unbox(init)["params"]["edit_skip"]["kernel"], 0.0)
  off = {k: v for k, v in params.items() if k != "edit_skip"}
  got = fwd({"params": params}, inputs, t_BV)
  want = jax.jit(model_off.apply)({"params": off}, inputs, t_BV)
  for g, w in zip(got, want):
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
  assert np.abs(np.asarray(got[1])).max() > 1e-3  # the velocities are not trivially zero


def test_target_slots_receive_the_source_patch_at_their_cell(setup):
  _, model, _, params, batch, inputs, t_BV, _ = setup
  vis = {k: batch[k][0] for k in ("vis_segment", "vis_kind", "vis_pos")}
  nvae = vis["vis_kind"] == Kind.NVAE
  edit_q, t2i_q = nvae & (vis["vis_segment"] == 1), nvae & (vis["vis_segment"] == 2)
  assert edit_q.sum() == 16 and t2i_q.sum() == 4
  # numpy reference: SRC2 (the most recent context image of the target's 4 x 4 grid; NARROW
  # is more recent but 2 x 4) at each target slot's own (H, W) cell; zero elsewhere.
  want = np.zeros(batch["vis_latent"].shape[1:], np.float32)
  h, w = vis["vis_pos"][edit_q, 1], vis["vis_pos"][edit_q, 2]
  want[edit_q] = images.patchify(SRC2, PATCH)[h * 4 + w]
  n = 6  # batch.vis_capacity: model.vis_images
  src = jax.jit(lambda b: model.apply({"params": params}, b, n, method=Mogao.edit_source))(
      inputs)
  np.testing.assert_array_equal(np.asarray(src)[0], want)  # the noised NVAE latents unread
  # what the model adds to the slots' input: an identity-like kernel copies the first
  # `width` channels of that patch, to the target's slots only
  eye = np.eye(48, model.cfg.width, dtype=np.float32)
  embed = jax.jit(lambda p, b, t: model.apply(
      {"params": p}, b, t, method=lambda m, b, t: m._embed(b, t, source_BVC=m.edit_source(b, n)))[1])
  added = np.asarray(embed(_with_kernel(params, eye), inputs, t_BV)
                     - embed(params, inputs, t_BV))[0]
  np.testing.assert_allclose(added[edit_q], want[edit_q][:, :model.cfg.width], atol=1e-6)
  np.testing.assert_array_equal(added[~edit_q], 0.0)  # t2i target, clean copies, padding


def _prompt(sampler, state, tok):
  """An edit prompt as the sampler's feed builds it (two context images), up to the
  target's `<img>`."""
  s = slots.Slots(state, PATCH).tokens([tok.bos_id]).tokens(tok.encode("ab"))
  for px, text in ((SRC1, "cd"), (SRC2, "make it so")):
    s.tokens([tok.img_open_id]).image(px, sampler._latent(px))
    s.tokens([tok.img_close_id]).tokens(tok.encode(text))
  return s.tokens([tok.img_open_id])


@pytest.fixture(scope="module")
def sampled(setup):
  """The sampler's velocity of the edit prompt's target at x, t = 0.3, with a nonzero skip:
  (params, gen_query batch, x, velocity, velocity with the source zeroed)."""
  model, params = setup[1], setup[3]
  tok = FakeTokenizer()
  params = _with_kernel(params, 0.3 * np.random.default_rng(3).normal(
      size=params["edit_skip"]["kernel"].shape))
  s = engine.Sampler(model, params, tokenizer=tok, image_size=16, patch_size=PATCH,
                     capacity=128, batch_size=1, sc=sampling.SampleConfig(steps=2))
  s.reset(1)
  state = slots.RowState()
  s._append([_prompt(s, state, tok)])
  b = s.gen_query([engine._Row([], 0, state)], [True])  # what _generate integrates
  x = jnp.asarray(np.random.default_rng(4).normal(size=(1, 16, 48)), jnp.float32)
  velocity = jax.jit(s.branch_velocities)
  got = np.asarray(velocity(params, s.cache, b, x, 0.3))[0, 0]
  no_src = np.asarray(velocity(params, s.cache, {**b, "vis_source": 0 * b["vis_source"]},
                               x, 0.3))[0, 0]
  return s, params, b, x, got, no_src


def test_sampler_applies_the_same_skip_as_the_training_forward(setup, sampled):
  inputs, fwd = setup[5], setup[7]
  s, params, b, x, got, no_src = sampled
  # the training forward on the whole row: the same prompt, then the noisy slots at x
  row = _prompt(s, slots.RowState(), FakeTokenizer()).noisy(s.codec.grid, 48)
  fb = slots.collate([row], s.dims, 128)
  is_n = fb["vis_kind"][0] == Kind.NVAE
  fb["vis_latent"][0, is_n] = np.asarray(x[0])
  vis_t = np.where(fb["vis_kind"] == Kind.NVAE, 0.3, 1.0).astype(np.float32)
  fb = {k: fb[k] for k in inputs}  # the packed row's fields: one compiled forward for both
  want = np.asarray(fwd({"params": params}, fb, vis_t)[1])[0, is_n]
  np.testing.assert_allclose(got, want, atol=TOL, rtol=TOL)
  # not vacuous: the sampler's source is SRC2's latent, and without it the velocity moves
  np.testing.assert_array_equal(b["vis_source"][0], images.patchify(SRC2, PATCH))
  assert np.abs(no_src - got).max() > 1e-3


def test_guidance_branch_without_images_gets_no_source(setup, monkeypatch):
  """Branch "none" reads no context image, so no source (as condition dropout of the context
  images trains it); "img" and "img + txt" get it. The forward is replaced by a recorder."""
  model, params = setup[1], setup[3]
  s = engine.Sampler(model, params, tokenizer=FakeTokenizer(), image_size=16,
                     patch_size=PATCH, capacity=128, batch_size=1,
                     sc=sampling.SampleConfig(steps=2, three_pass=True))
  src = np.random.default_rng(5).normal(size=(1, 16, 48)).astype(np.float32)
  seen = {}

  def record(params, cache, bb, vis_t, keep):
    seen.update(bb)
    return None, jnp.zeros(bb["vis_latent"].shape), None

  monkeypatch.setattr(s, "forward", record)
  b = slots.collate([slots.Slots(slots.RowState(), PATCH).noisy(s.codec.grid, 48)], s.dims,
                    128, n_txt=0, n_vis=16)
  s.branch_velocities(params, s.cache, {**b, "vis_source": src}, jnp.zeros((1, 16, 48)), 0.5)
  got = np.split(np.asarray(seen["vis_source"]), 3, axis=1)
  np.testing.assert_array_equal(got[0], 0.0)
  np.testing.assert_array_equal(got[1], src)
  np.testing.assert_array_equal(got[2], src)


def _torch_model(params, cfg, out):
  torch_export.export(params, cfg, str(out))
  from mogao_jax.convert import torch_model  # noqa: needs torch (the file copied to `out`)
  return torch_model.Mogao.from_dir(str(out))


def test_torch_export_matches_on_the_edit_row(setup, sampled, tmp_path):
  torch = pytest.importorskip("torch")
  _, model, _, _, batch, inputs, t_BV, fwd = setup
  params = sampled[1]
  tm = _torch_model(params, model.cfg, tmp_path)
  want = np.asarray(fwd({"params": params}, inputs, t_BV)[1])[0]
  got = tm({k: torch.from_numpy(np.array(v)) for k, v in inputs.items()},
           torch.from_numpy(np.array(t_BV)))[1].numpy()[0]
  real = batch["vis_segment"][0] > 0
  np.testing.assert_allclose(got[real], want[real], atol=1e-4 * np.abs(want).max())
  zero = np.asarray(fwd({"params": setup[3]}, inputs, t_BV)[1])[0]
  assert np.abs(zero - want).max() > 1e-2 * np.abs(want).max()  # the skip matters here


def test_torch_generate_applies_the_skip_as_the_sampler(setup, sampled, tmp_path):
  """torch_generate.py's velocity of the same prompt's target equals the JAX sampler's; its
  "none" guidance branch has no source (the same with the skip's kernel zeroed)."""
  torch = pytest.importorskip("torch")
  from mogao_jax.convert import torch_generate  # noqa: needs torch
  model = setup[1]
  s, params, _, x, got, _ = sampled
  tok = FakeTokenizer()
  doc = torch_generate.Document(48, 48)
  doc.tokens([tok.bos_id] + tok.encode("ab"))
  for px, text in ((SRC1, "cd"), (SRC2, "make it so")):
    patches = images.patchify(px, PATCH)  # the pixel codec: latents = VIT patches
    doc.tokens([tok.img_open_id])
    doc.image(patches, (4, 4), patches, (4, 4))
    doc.tokens([tok.img_close_id] + tok.encode(text))
  doc.tokens([tok.img_open_id])
  gens = []
  for name, p in (("skip", params), ("zero", setup[3])):
    gen = torch_generate.Generator.__new__(torch_generate.Generator)  # no generation.json
    gen.model, gen.g = _torch_model(p, model.cfg, tmp_path / name), {"latent_grid": [4, 4]}
    gens.append(gen)
  x_t = torch.from_numpy(np.array(x[0]))
  v = gens[0].velocity(doc, x_t, 0.3, False, 1.0, 1.0).numpy()
  np.testing.assert_allclose(v, got, atol=1e-4 * np.abs(got).max())
  # guidance scales 0, 0: the "none" branch alone
  none = [g.velocity(doc, x_t, 0.3, True, 0.0, 0.0).numpy() for g in gens]
  np.testing.assert_allclose(none[0], none[1], atol=1e-6)


def test_tiny_cpu_argument_turns_it_on_and_the_default_is_unchanged():
  exp = config_args.load_experiment(TINY_CPU)
  default = exp.get_config().to_dict()
  assert "edit_skip" not in default["model"]
  assert exp.get_config("editskip=0").to_dict() == default
  on = exp.get_config("editskip=1").to_dict()
  assert on["model"].pop("edit_skip") is True
  assert on == default


def test_text_decoding_without_vision_slots_adds_nothing():
  """The sampler's text steps decode with no vision slot (decode derives the source over the
  new slots alone): an empty stream gives an empty source, never an argmax over no image
  (`evaluate` on an edit_skip run crashed there on its first caption)."""
  from mogao_jax.model import edit_skip  # pylint: disable=g-import-not-at-top
  z = lambda *s: jnp.zeros(s, jnp.int32)  # noqa: E731
  out = edit_skip.source_latents(z(2, 0), z(2, 0), z(2, 0, 3), z(2, 0),
                                 jnp.zeros((2, 0, 48)), 0, 4)
  assert out.shape == (2, 0, 48)
