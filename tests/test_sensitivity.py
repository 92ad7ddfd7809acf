"""The generation diagnostics: the prompt-word sensitivity measures what the vision slots read
of the prompt (exactly zero when the mask hides the text from them, nonzero when it does not);
the denoising error by noise level measures the clean-image estimate against the image."""

import numpy as np
import pytest

from mogao_jax.data import pipeline
from mogao_jax.data.sources import world
from mogao_jax.data.sources.world import scene as scene_lib
from mogao_jax.eval import denoise, sensitivity
from mogao_jax.model.mogao import Mogao
from tests import modelkit


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  from tests.configs import tiny_config  # pylint: disable=g-import-not-at-top
  return pipeline.make_tokenizer(tiny_config(), str(tmp_path_factory.mktemp("tok")))


def _sens(config, tokenizer, cls):
  params = modelkit.perturbed_params(config, Mogao.from_config(config))
  return sensitivity.word_sensitivity(config, params, tokenizer, cls, times=(0.3,))[0.3]


def test_colour_word_moves_velocity_only_if_vision_sees_text(config, tokenizer):
  big, mean = _sens(config, tokenizer, "colour")
  assert big > 1e-3 and mean > 0
  # NVAE row of mask_other without TXT (1110 -> 0110): the generated image reads no text.
  config.model.mask_other = "1100,1100,1110,0110"
  big, mean = _sens(config, tokenizer, "colour")
  assert big == 0.0 and mean == 0.0


class _OneTokenPerWord:
  def __init__(self, ids):
    self.ids = ids

  def encode(self, word):
    return [self.ids[word]] if word in self.ids else [1, 2]


def test_embedding_cosine():
  table = np.zeros((8, 4), np.float32)
  table[3], table[4], table[5] = [1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 2, 0]
  params = {"embed_tokens": {"embedding": table}}
  tok = _OneTokenPerWord({"a": 3, "b": 4, "c": 5})
  # pairs: (a, b) 1/sqrt(2), (a, c) 0, (b, c) 0
  assert sensitivity.embedding_cosine(params, tok, ["a", "b", "c"]) == pytest.approx(
      np.sqrt(0.5) / 3, rel=1e-6)
  with pytest.raises(ValueError, match="'zz' is 2 tokens"):
    sensitivity.embedding_cosine(params, tok, ["a", "zz"])


def test_denoise_error_of_a_zero_x1_head_is_the_image_power_at_every_t(config, tokenizer):
  # A fresh model's vision head is zero-initialised, so with predict = "x1" its clean-image
  # estimate is exactly 0 whatever x_t, and the error is the mean squared pixel value (in
  # [-1, 1]) of the rendered scenes at every t below the head's 1 - t >= 0.05 clamp. A wrong
  # (1 - t) scaling of the velocity error would make the errors depend on t (and the noise
  # then on the values: with x1_hat = 0 the right error holds for any noise).
  assert config.model.predict == "x1"
  params = modelkit.fresh_params(config, Mogao.from_config(config))
  errs = denoise.x1_errors(config, params, tokenizer, n=3, times=(0.0, 0.5, 0.9), seed=5)
  rng = np.random.default_rng(5)
  power = [np.mean(np.square(world.render(scene_lib.sample_in_split(
      rng, "eval", scene_lib.sample_scene), config.data.image_size) / 127.5 - 1.0))
           for _ in range(3)]
  for t, e in errs.items():
    assert e == pytest.approx(np.mean(power), rel=1e-5), t
