"""How much a prompt word steers generation: a diagnostic of text-to-image conditioning.

    python -m mogao_jax.eval.sensitivity --workdir DIR

For each attribute class of the world (colour, shape, size) it takes prompts that differ in
that one word ("a large red square in the centre." vs "... blue ..."), gives the model the same
clean image and the same noise, and prints the largest and mean difference of the predicted
velocities on the generated image's slots, at a few times t, plus the mean pairwise cosine of
the class's token embeddings. A model that ignores a word class shows ~0 differences whatever
its loss (issue #3: colour words moved the tied quickstart model by 0.003 at step 500, because
their embeddings had collapsed to cosine 0.93).
"""

from __future__ import annotations

import itertools

from absl import app, flags
import jax
import numpy as np

from mogao_jax.data import batch as batch_lib
from mogao_jax.data import documents, encoding, packing
from mogao_jax.data.sources import world
from mogao_jax.sample import load
from mogao_jax.model.mogao import Mogao
from mogao_jax.model import flow

CLASSES = {"colour": list(world.COLOURS), "shape": list(world.SHAPES),
           "size": list(world.SIZES)}
BASE = {"colour": "red", "shape": "square", "size": "large"}
TIMES = (0.05, 0.2, 0.4)


def _prompt(words: dict[str, str]) -> str:
  return f"a {words['size']} {words['colour']} {words['shape']} in the centre."


def t2i_row(config, tokenizer, text: str, pixels: np.ndarray) -> dict[str, np.ndarray]:
  """One packed row (batch of 1): `text`, then `pixels` as the generated image."""
  doc = documents.Document((documents.Text(text), documents.Image(pixels, generate=True)))
  d, m = config.data, config.model
  packer = packing.TwoStreamPacker(d.l_txt, d.l_vis, m.patch_dim, m.latent_dim, open_rows=1)
  packer.add(encoding.encode_document(doc, tokenizer, d.patch_size))
  return {k: v[None] for k, v in packer.pop_oldest().items()}


def _base_pixels(config) -> np.ndarray:
  """The world's base object (a large red square in the centre), rendered."""
  obj = world.Object(1, 1, BASE["shape"], BASE["colour"], BASE["size"])
  return world.render(world.Scene((obj,)), config.data.image_size)


def noised_velocities(apply, params, b, t: float, seed: int = 0):
  """(predicted, target) velocities [n_nvae, C] of row `b`'s generated image noised to time
  t with the noise of `seed`, through the train step's own noising. `apply`: the model's
  (jitted) apply."""
  nvae = b["vis_kind"][0] == batch_lib.Kind.NVAE
  noise = np.random.default_rng(seed).standard_normal(b["vis_latent"].shape).astype(np.float32)
  n_ids = int(b["vis_image"].max()) + 1
  inputs, t_BV, target = flow.apply_noise(batch_lib.model_inputs(b),
                                              np.full((1, n_ids), t, np.float32), noise)
  _, v = apply({"params": params}, inputs, t_BV)
  return np.asarray(v)[0][nvae], np.asarray(target)[0][nvae]


def word_sensitivity(config, params, tokenizer, cls: str, times=TIMES) -> dict[float, tuple]:
  """{t: (max, mean)} of |v(prompt with word a) - v(prompt with word b)| over every pair of
  the class's words (the other words at BASE)."""
  apply = jax.jit(Mogao.from_config(config).apply)
  pixels = _base_pixels(config)
  rows = [t2i_row(config, tokenizer, _prompt(BASE | {cls: w}), pixels) for w in CLASSES[cls]]
  out = {}
  for t in times:
    vs = [noised_velocities(apply, params, b, t)[0] for b in rows]
    diffs = [np.abs(a - b) for a, b in itertools.combinations(vs, 2)]
    out[t] = (float(max(d.max() for d in diffs)), float(np.mean([d.mean() for d in diffs])))
  return out


def embedding_cosine(params, tokenizer, words) -> float:
  """Mean pairwise cosine of the words' input embeddings (each word a single token)."""
  table = np.asarray(params["embed_tokens"]["embedding"])
  ids = []
  for w in words:
    pieces = tokenizer.encode(w)
    if len(pieces) != 1:
      raise ValueError(f"word {w!r} is {len(pieces)} tokens, not one: {pieces}")
    ids.append(pieces[0])
  x = table[ids] / np.linalg.norm(table[ids], axis=1, keepdims=True)
  return float(np.mean([x[i] @ x[j] for i, j in itertools.combinations(range(len(ids)), 2)]))


def report(workdir: str) -> str:
  config, params, _, tokenizer = load.load(workdir)
  head = "class    emb cos  " + "  ".join(f"t={t}: max / mean |dv|" for t in TIMES)
  lines = [head]
  for cls, words in CLASSES.items():
    s = word_sensitivity(config, params, tokenizer, cls)
    cells = "  ".join(f"{s[t][0]:10.4f} / {s[t][1]:.4f}     " for t in TIMES)
    lines.append(f"{cls:8s} {embedding_cosine(params, tokenizer, words):7.3f}  {cells}")
  return "\n".join(lines)


def main(argv):
  del argv
  print(report(flags.FLAGS.workdir))


if __name__ == "__main__":
  # Flags only when run as a command (as data/check.py): importing this module beside another
  # command's module (pytest does) must not define --workdir twice.
  flags.DEFINE_string("workdir", None, "a training workdir (its latest checkpoint)")
  flags.mark_flag_as_required("workdir")
  app.run(main)
