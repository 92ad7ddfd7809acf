"""Exact scoring on the built-in world (issue 3): a deterministic image parser, GenEval-style
text-to-image, editing, story and answer scores, and the fixed held-out eval set."""

from mogao_jax.eval.parse import parse_image
from mogao_jax.eval.prompts import EVAL_KINDS, EvalItem, eval_prompts, gold, score_item
from mogao_jax.eval.scorer import (normalise_text, score_answer, score_edit, score_story,
                                   score_t2i, summarize, t2i_satisfied)
