"""Sampling: KV-cached decoding equals the full forward pass, generated images enter the cache
exactly as input images do, the ODE solver and guidance do their maths."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mogao_jax.data import documents, encoding
from mogao_jax.data.batch import Kind
from mogao_jax.model import flow
from mogao_jax.sample import engine, sampling, slots
from mogao_jax.model.mogao import Mogao
from tests import modelkit
from tests.configs import tiny_config

IMAGE, PATCH = 16, 4
# float32 tolerance of cached vs full logits: the same maths, summed in a different order
# (C + L keys incl. empty slots instead of L); measured differences are <= 4e-7.
TOL = 2e-5


class FakeTokenizer:
  """Character-level ids over the tiny vocab; ids 0-5 as the real tokenizer's specials."""
  pad_id, bos_id, eos_id, img_open_id, img_close_id = 0, 2, 3, 4, 5
  vocab_size = 106  # the tiny model has 128 embedding rows: 22 past the tokenizer

  def encode(self, text):
    return [6 + (ord(ch) % 100) for ch in text]

  def plain_ids(self):
    return np.arange(6, self.vocab_size)

  def special_literals(self, text):
    return []

  def decode(self, ids):
    return "".join(chr(97 + (i - 6) % 26) for i in ids)


@pytest.fixture(scope="module")
def setup():
  c = tiny_config()
  model = Mogao.from_config(c)
  params = modelkit.perturbed_params(c, model)
  full = jax.jit(lambda p, b: model.apply({"params": p}, b, jnp.ones(b["vis_kind"].shape))[0])
  make = functools.partial(engine.Sampler, model, params, tokenizer=FakeTokenizer(),
                           image_size=IMAGE, patch_size=PATCH, capacity=128)
  sampler = make(batch_size=1, sc=sampling.SampleConfig(steps=3))
  return c, model, params, full, make, sampler


def _pixels(seed):
  return np.random.default_rng(seed).integers(0, 256, (IMAGE, IMAGE, 3), dtype=np.uint8)


def _chunks(tok, spec):
  """spec: list of token lists and images -> list of (state-free) chunk builders."""
  out = []
  for x in spec:
    if isinstance(x, np.ndarray):
      out.append(lambda s, x=x: s.tokens([tok.img_open_id]).image(x).tokens([tok.img_close_id]))
    else:
      out.append(lambda s, x=x: s.tokens(x))
  return out


def _cached_vs_full(setup, spec, n_prefix):
  """Feeds spec[:n_prefix] as one prefill, then every later text token one by one; returns
  (cached logits, full-pass logits) at every TXT slot from the prefill's last one on."""
  c, _, params, full, _, s = setup
  tok = FakeTokenizer()
  whole = slots.Slots(slots.RowState(), PATCH)  # the whole sequence in one call: the reference
  for f in _chunks(tok, spec):
    f(whole)
  b = slots.collate([whole], s.dims, s.capacity)
  ref = np.asarray(full(params, b))[0]
  txt_idx = np.nonzero(b["txt_kind"][0] == Kind.TXT)[0]

  s.reset(1)
  row = slots.RowState()
  pre = slots.Slots(row, PATCH)
  for f in _chunks(tok, spec[:n_prefix]):
    f(pre)
  s._append([pre])
  got = [np.asarray(s.logits[0])]
  n_done = pre.n_txt()
  for x in spec[n_prefix:]:
    for f in _chunks(tok, [x] if isinstance(x, np.ndarray) else [[t] for t in x]):
      one = slots.Slots(row, PATCH)
      f(one)
      s._append([one])
      got.append(np.asarray(s.logits[0]))
  # reference logits at the last TXT slot of each call, in call order
  want = [ref[i] for i in txt_idx if i >= n_done - 1]
  return np.stack(got), want


def test_prompt_slots_follow_encode_document():
  tok = FakeTokenizer()
  px = _pixels(0)
  doc = documents.Document([documents.Text("ab"), documents.Image(px), documents.Text("c")])
  enc = encoding.encode_document(doc, tok, PATCH)
  s = slots.Slots(slots.RowState(), PATCH).tokens([tok.bos_id]).tokens(tok.encode("ab"))
  s.tokens([tok.img_open_id]).image(px).tokens([tok.img_close_id]).tokens(tok.encode("c"))
  b = slots.collate([s], (48, 48), 128)
  n = len(enc["txt_kind"]) - 1  # encode_document ends with EOS
  for f in ("kind", "image", "pos", "token", "patch"):
    np.testing.assert_array_equal(b[f"txt_{f}"][0, :n], enc[f"txt_{f}"][:n], err_msg=f)
  # the sampler also keeps a CVAE copy of every context image, at the VIT copy's position
  cvae = b["vis_kind"][0] == Kind.CVAE
  vit = b["txt_kind"][0] == Kind.VIT
  np.testing.assert_array_equal(b["vis_pos"][0, cvae], b["txt_pos"][0, vit])


def test_cached_text_logits_match_full_forward(setup):
  toks = list(np.random.default_rng(0).integers(6, 128, 12))
  got, want = _cached_vs_full(setup, [[2] + toks[:4], toks[4:]], 1)
  assert len(got) == len(want) == 9
  np.testing.assert_allclose(got, np.stack(want), atol=TOL, rtol=TOL)


def test_cached_logits_with_context_image_match_full_forward(setup):
  toks = list(np.random.default_rng(1).integers(6, 128, 8))
  spec = [[2] + toks[:3], _pixels(1), toks[3:]]
  got, want = _cached_vs_full(setup, spec, 1)
  # after the prefill: one call for <img> image </img>, then one per token
  assert len(got) == 2 + 5 and len(want) == 1 + 1 + 1 + 5  # </img> call ends at </img>
  want = [want[0], want[2], *want[3:]]  # the <img> slot's logits are inside the image call
  np.testing.assert_allclose(got, np.stack(want), atol=TOL, rtol=TOL)


def _image_slots_kv(s, image_id):
  cache = jax.device_get(s.cache)
  sel = (cache.image[0] == image_id) & np.isin(cache.kind[0], (Kind.VIT, Kind.CVAE))
  order = np.lexsort((cache.pos[0, sel, 2], cache.pos[0, sel, 1], cache.kind[0, sel]))
  return cache.k[:, 0, sel][:, order], cache.v[:, 0, sel][:, order], cache.pos[0, sel][order]


def test_generated_image_enters_cache_as_input_image_does(setup):
  s = setup[-1]
  out = s.run([[documents.Text("abc"), engine.Gen()]])[0]
  gen = [p for role, p in out if role == "gen"]
  assert len(gen) == 1 and gen[0].pixels.shape == (IMAGE, IMAGE, 3)
  k1, v1, p1 = _image_slots_kv(s, 1)
  assert k1.shape[1] == 2 * (IMAGE // PATCH) ** 2  # VIT + CVAE copies
  s.run([[documents.Text("abc"), documents.Image(gen[0].pixels)]])
  k2, v2, p2 = _image_slots_kv(s, 1)
  np.testing.assert_array_equal(p1, p2)
  np.testing.assert_allclose(k1, k2, atol=TOL)
  np.testing.assert_allclose(v1, v2, atol=TOL)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_ode_lands_on_analytic_solutions(shift):
  x0 = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5)), jnp.float32)
  x1 = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5)), jnp.float32)
  # The straight path of rectified flow: v = (x1 - x) / (1 - t). Euler follows it exactly.
  straight = lambda x, t: (x1 - x) / (1.0 - t)  # noqa: E731
  np.testing.assert_allclose(sampling.integrate(straight, x0, 4, shift), x1, atol=1e-5)
  # dx/dt = -x: x(1) = x0 / e; Euler's global error is O(1/steps) and shrinks with steps.
  exact = x0 * np.exp(-1.0)
  errs = []
  for n in (5, 20, 80):
    got = sampling.integrate(lambda x, t: -x, x0, n, shift)
    ts = np.asarray(flow.time_grid(n, shift), np.float64)
    np.testing.assert_allclose(got, x0 * np.prod(1 - np.diff(ts)), rtol=1e-5)  # Euler exactly
    errs.append(float(jnp.max(jnp.abs(got - exact))))
  assert errs[0] > errs[1] > errs[2]
  assert errs[2] < 2.0 * shift / 80 * float(jnp.max(jnp.abs(x0)))


def test_guidance_formula():
  r = np.random.default_rng(0)
  v0, v1, v2 = (r.normal(size=(3, 4)) for _ in range(3))
  np.testing.assert_allclose(sampling.guide(v0, v1, v2, 1.0, 1.0), v2)  # scales 1: conditional
  want = v0 + 1.5 * (v1 - v0) + 7.5 * (v2 - v1)
  np.testing.assert_allclose(sampling.guide(v0, v1, v2, 1.5, 7.5), want)
  np.testing.assert_allclose(sampling.guide(v0, v1, v2, 4.0, 4.0), v0 + 4.0 * (v2 - v0))


def _nvae_query(s, state):
  q = slots.Slots(state, PATCH).noisy(s.grid, s.cfg.latent_dim)
  return slots.collate([q], s.dims, s.capacity, n_txt=0, n_vis=s.grid ** 2)


def test_guidance_branches_drop_conditions(setup):
  c, _, params, _, make, _ = setup
  s3 = make(batch_size=1, sc=sampling.SampleConfig(steps=2, three_pass=True))
  s1 = setup[-1]
  x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 16, 48)), jnp.float32)
  for s in (s1, s3):  # same prompt in both: text, a context image, text
    s.reset(1)
    st = slots.RowState()
    s._append([slots.Slots(st, PATCH).tokens([2, 7, 8, 4]).image(_pixels(3)).tokens([5, 9, 4])])
  b = _nvae_query(s3, st)
  v3 = np.asarray(jax.jit(s3.branch_velocities)(params, s3.cache, b, x, 0.3))
  v1 = np.asarray(jax.jit(s1.branch_velocities)(params, s1.cache, b, x, 0.3))
  np.testing.assert_allclose(v3[2], v1[0], atol=TOL)  # img + txt = the unguided prediction
  s1.reset(1)  # "none" = the image alone, with nothing in the cache
  v_alone = np.asarray(jax.jit(s1.branch_velocities)(params, s1.cache, b, x, 0.3))[0]
  np.testing.assert_allclose(v3[0], v_alone, atol=TOL)
  assert np.abs(v3[1] - v3[0]).max() > 1e-3 and np.abs(v3[2] - v3[1]).max() > 1e-3
  # guidance at scales 1 is the conditional prediction (up to float cancellation)
  guided = sampling.guide(v3[0], v3[1], v3[2], 1.0, 1.0)
  np.testing.assert_allclose(guided, v1[0], atol=1e-5 * np.abs(v3).max())


def test_token_filters():
  logits = jnp.asarray([[0.0, 3.0, 1.0, 2.0], [5.0, 0.0, 0.0, 4.9]])
  keep = sampling.filter_logits(logits, top_k=2) > -1e30
  np.testing.assert_array_equal(keep, [[0, 1, 0, 1], [1, 0, 0, 1]])
  keep = sampling.filter_logits(logits, top_p=0.5) > -1e30
  np.testing.assert_array_equal(keep, [[0, 1, 0, 0], [1, 0, 0, 0]])
  keys = jax.random.split(jax.random.key(0), 2)
  greedy = sampling.sample_tokens(keys, logits, sampling.SampleConfig())
  np.testing.assert_array_equal(greedy, [1, 0])
  hot = sampling.SampleConfig(temperature=1.0, top_k=1)
  np.testing.assert_array_equal(sampling.sample_tokens(keys, logits, hot), [1, 0])


@pytest.mark.slow  # several sampler compiles (~20 s): keeps the default suite inside its 20 minutes
def test_batch_equals_single_runs_and_is_deterministic(setup):
  make = setup[4]
  sc = sampling.SampleConfig(steps=2, temperature=1.0, top_k=8)
  scripts = [[documents.Text("ab"), engine.Decode(4)], [documents.Text("xyz"), engine.Gen()],
             [documents.Text("q"), engine.Decode(3)], [documents.Text("mn"), engine.Gen()]]
  uids = [7, 8, 9, 10]
  four = make(batch_size=4, sc=sc)
  batch = four.run(scripts, uids=uids)
  single = make(batch_size=1, sc=sc)
  for script, uid, got in zip(scripts, uids, batch):
    want = single.run([script], uids=[uid])[0]
    assert [r for r, _ in got] == [r for r, _ in want]
    for (_, a), (_, b) in zip(got, want):
      if isinstance(a, documents.Text):
        assert a.text == b.text
      else:
        assert np.abs(a.pixels.astype(int) - b.pixels.astype(int)).max() <= 1
  again = four.run(scripts, uids=uids)
  assert again[0][-1][1].text == batch[0][-1][1].text
  np.testing.assert_array_equal(again[1][-1][1].pixels, batch[1][-1][1].pixels)


def test_decoded_img_token_generates_an_image_then_decoding_resumes(setup, monkeypatch):
  """A model that always writes `<img>`: Decode(2) yields two images, then its budget ends."""
  always_img = lambda keys, logits, *_: jnp.full(logits.shape[:1], FakeTokenizer.img_open_id)  # noqa
  monkeypatch.setattr(sampling, "sample_tokens", always_img)
  s = setup[4](batch_size=1, sc=sampling.SampleConfig(steps=1))
  doc = s.run([[documents.Text("ab"), engine.Decode(2)]])[0]
  assert [(r, type(p).__name__) for r, p in doc] == [
      ("prompt", "Text"), ("gen", "Image"), ("gen", "Image")]
  # BOS a b <img> [VIT x16] </img> <img> [VIT x16] </img> + 2 x 16 CVAE slots
  assert int((np.asarray(s.cache.segment[0]) > 0).sum()) == 3 + 2 * (1 + 16 + 1) + 2 * 16


class _Recording(FakeTokenizer):
  def __init__(self):
    self.decoded = []

  def decode(self, ids):
    self.decoded += list(ids)
    return super().decode(ids)


def test_never_emits_an_id_the_tokenizer_cannot_decode(setup):
  """A model forced to prefer embedding rows past the tokenizer (ids 120 / 121 of 128; the
  tokenizer has 106) and the reserved ids: the sampler never emits them."""
  c, model, params = setup[:3]
  params = jax.tree_util.tree_map(lambda x: x, params)  # a copy; the fixture's stay
  # The final norm keeps one feature h_0 != 0; the head reads only it, with the largest weights
  # on 120 (h_0 > 0 wins) and 121 (h_0 < 0 wins), then the reserved 0, 1, 2 and 5, then the
  # text ids 50 / 51.
  params["txt_norm"]["scale"] = jnp.zeros_like(params["txt_norm"]["scale"]).at[0].set(1.0)
  head = params["lm_head"]["kernel"] if "lm_head" in params else None
  assert head is not None and head.shape == (c.model.width, c.model.vocab_size)
  w = np.zeros(head.shape, np.float32)
  w[0, [120, 121, 0, 1, 2, 5, 50, 51]] = [50.0, -50.0, 40.0, -40.0, 30.0, -30.0, 20.0, -20.0]
  params["lm_head"]["kernel"] = jnp.asarray(w, head.dtype)
  tok = _Recording()
  s = engine.Sampler(model, params, tokenizer=tok, image_size=IMAGE, patch_size=PATCH,
                     capacity=128, batch_size=2, sc=sampling.SampleConfig(temperature=1.0))
  docs = s.run([[documents.Text("ab"), engine.Decode(12, images=False)],
                [documents.Text("xyz"), engine.Decode(12, images=False)]])
  # unrestricted, the head's choice is an id past the tokenizer
  assert int(np.argmax(np.asarray(s.logits[0]))) in (120, 121)
  assert sorted(set(tok.decoded)) in ([50], [51]) and len(tok.decoded) == 24  # 12 per row
  assert [r for r, _ in docs[0]] == ["prompt", "gen"]
