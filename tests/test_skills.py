"""Skills learned: a shortened quickstart recipe (the default experiment, fewer steps) against
the same model untrained, both scored on the world's held-out items by the eval's own path
(mogao_jax.eval.run: the sampler, then the exact scorer).

Each skill is a number in [0, 1] of `scorer.skills` that an untrained model scores near 0.
The margins (MARGINS) are what the shortened run must add to its untrained level: about half
of what it added when measured (benchmarks/LEARNING.md, "The skills test"), so that other
platforms' float differences pass and a recipe that stops learning a skill fails. Captions,
edits and stories are exact scores that 300 steps barely reach, so their partial scores
stand for them (`scorer.scene_partial`: the share of count / colour / position / shape / size
an image gets right; `scorer.text_overlap` for captions).
"""

import jax
import pytest

from mogao_jax import eval as eval_lib
from mogao_jax.data import batch as batch_lib
from mogao_jax.eval import run, scorer
from mogao_jax.model.mogao import Mogao
from mogao_jax.sample import engine, load
from mogao_jax.train import loop
from mogao_jax.train import optimizer as optim_lib
from mogao_jax.train import step as step_lib
from tests.configs import load_config

pytestmark = pytest.mark.slow

STEPS = 300
N_PER_CATEGORY = 6
MAX_TOKENS = 32


# scorer.skills name -> what 300 steps must add to the untrained score. One measure per skill:
# text-to-image by its attributes (GenEval needs shape, which 300 steps do not learn), VQA,
# and captions, edits and stories by their partial scores.
# Measured (2 CPU cores, 2026-12-07): 0 untrained everywhere; trained t2i_attributes 0.114,
# vqa 0.444, caption_partial 0.579, edit_partial 0.133, story_partial 0.167.
MARGINS = {
    "t2i_attributes": 0.05,
    "vqa": 0.2,
    "caption_partial": 0.3,
    "edit_partial": 0.06,
    "story_partial": 0.08,
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("skills"))
  c = load_config()
  c.train.update(steps=STEPS, log_every=50, ckpt_every=STEPS, sample_every=0)
  loop.train(c, workdir)
  return workdir


def _scores(config, params, tok):
  sampler = engine.Sampler.from_config(config, params, tok, max_tokens=MAX_TOKENS)
  items = eval_lib.eval_prompts(config, N_PER_CATEGORY)
  outputs = run.generate(sampler, items, MAX_TOKENS)
  _, summary = run.score(items, outputs)
  return scorer.skills(summary)


def test_each_skill_rises_above_untrained(trained):
  config, params, step, tok = load.load(trained)
  assert step == STEPS
  model = Mogao.from_config(config)
  tx, _ = optim_lib.make_optimizer(config)
  untrained = step_lib.init_state(config, model, tx, jax.random.key(config.seed + 1),
                                  batch_lib.example_batch(config, 1)).params
  before, after = _scores(config, untrained, tok), _scores(config, params, tok)
  for name in after:
    print(f"{name}: untrained {before[name]:.3f} -> trained {after[name]:.3f}")
  for name, margin in MARGINS.items():
    assert after[name] >= before[name] + margin, (name, before[name], after[name])
