"""The built-in world: scenes of coloured shapes on a 3x3 grid, documents about them, and text.

Everything is a pure function of its arguments (document i of a split is a function of
(seed, split, i)), and the renderer is simple enough for `mogao_jax.eval` to invert exactly.

  scene.py     objects, scenes, the train/eval split by scene hash, scene edits (ops)
  render.py    anti-aliased rendering at any resolution
  language.py  captions, GenEval-style prompts, questions, edit and story sentences
  kinds.py     the document kinds (t2i, caption, vqa, edit, story) and their mixture
"""

from mogao_jax.data.sources.world.kinds import (DEFAULT_STORY_STEPS, DEFAULT_T2I_WEIGHTS,
                                                DOC_KINDS, build_layout, check_doc_weights,
                                                check_story_steps, check_weights, edit_layout,
                                                make_document, render_layout, story_layout,
                                                t2i_layout, t2i_spec, vqa_layout,
                                                world_text_corpus)
from mogao_jax.data.sources.world.language import (GENEVAL_CATEGORIES, NUMBERS,
                                                   QUESTION_TYPES, T2I_CATEGORIES, describe,
                                                   op_text, position_name, question_answer,
                                                   refer, t2i_prompt)
from mogao_jax.data.sources.world.render import render
from mogao_jax.data.sources.world.scene import (BACKGROUND, COLOURS, DIRECTIONS, MAX_OBJECTS,
                                                OPS, SHAPES, SIZES, SPLITS, Object, Scene,
                                                apply_op, candidate_ops, random_objects,
                                                sample_op, sample_scene, split_of)
