"""The prompt-word sensitivity diagnostic measures what the vision slots read of the prompt:
exactly zero when the mask hides the text from them, nonzero when it does not."""

import numpy as np
import pytest

from mogao_jax.data import pipeline
from mogao_jax.eval import sensitivity
from mogao_jax.train import step
from tests import modelkit


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  from tests.configs import tiny_config  # pylint: disable=g-import-not-at-top
  return pipeline.make_tokenizer(tiny_config(), str(tmp_path_factory.mktemp("tok")))


def _sens(config, tokenizer, cls):
  params = modelkit.perturbed_params(config, step.make_model(config))
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
