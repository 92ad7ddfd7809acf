"""Text roles and data.text_loss_weights (issue 34, "the loss on the tokens that teach"): the
world's kinds label their text, the encoder weighs each text position by the role of the token
it predicts, the default stays bit-identical, and a role weighing 0 loses exactly its tokens."""

import ml_collections
import numpy as np
import pytest

from mogao_jax import config_args, config_schema
from mogao_jax.data import documents, encoding, pipeline, records
from mogao_jax.data import tokenizer as tokenizer_lib
from mogao_jax.data.batch import Kind
from mogao_jax.data.sources import world
from mogao_jax.train import loop
from tests.configs import TINY_CPU

S, P = 16, 4
ROLES_OF = {"t2i": {"prompt"}, "caption": {"caption"}, "vqa": {"question", "answer"},
            "edit": {"instruction"}, "story": {"story"}}


@pytest.fixture(scope="module")
def tok():
  return tokenizer_lib.train(128, world.world_text_corpus(100))


def _weights(**given):
  return encoding.role_weights(ml_collections.ConfigDict({"text_loss_weights": given}))


def _doc(kind, i):
  return world.make_document(0, i, S, {kind: 1.0})


def _old_rule(enc, img_close_id):
  """The text loss weight before roles, computed independently: 1 on every TXT position of
  the document but its last, unless it predicts `</img>`."""
  (idx,) = np.nonzero(enc["txt_kind"] == Kind.TXT)
  w = np.zeros(len(enc["txt_kind"]), np.float32)
  w[idx[:-1]] = enc["txt_token"][idx[1:]] != img_close_id
  return w


def test_world_kinds_label_their_text():
  for kind, roles in ROLES_OF.items():
    for i in range(4):
      texts = [p for p in _doc(kind, i).parts if isinstance(p, documents.Text)]
      assert texts and {p.role for p in texts} == roles, kind
  vqa = [p for p in _doc("vqa", 0).parts if isinstance(p, documents.Text)]
  assert [p.role for p in vqa] == ["question", "answer"]  # in reading order


def test_text_is_backwards_compatible_and_checks_its_role():
  assert documents.Text("a").role == "plain" and documents.Text("a") == documents.Text("a")
  assert documents.Text("a", role="answer") != documents.Text("a")
  with pytest.raises(ValueError, match="Text.role must be one of .*'promt'"):
    documents.Text("a", role="promt")


def test_default_weights_are_todays_bit_for_bit(tok):
  """None (the key absent), {} and every role at 1.0 give the arrays of the rule before roles,
  truncated documents included."""
  ones = _weights(**{r: 1.0 for r in documents.TEXT_ROLES})
  assert _weights() is None and set(ones.values()) == {1.0}
  for kind in world.DOC_KINDS:
    for i in range(3):
      doc, max_len = _doc(kind, i), ((24, 32) if i == 2 else None)
      base = encoding.encode_document(doc, tok, P, max_len=max_len)
      same = encoding.encode_document(doc, tok, P, max_len=max_len, text_loss_weights=ones)
      np.testing.assert_array_equal(base["txt_loss_w"], _old_rule(base, tok.img_close_id))
      assert base["txt_loss_w"].any(), kind
      for k in base:
        if k != "doc":
          assert base[k].dtype == same[k].dtype and np.array_equal(base[k], same[k]), (kind, k)


def test_zero_weight_removes_exactly_that_roles_tokens(tok):
  for kind, roles in ROLES_OF.items():
    for i in range(3):
      doc = _doc(kind, i)
      base = encoding.encode_document(doc, tok, P)
      for role in documents.TEXT_ROLES:
        enc = encoding.encode_document(doc, tok, P, text_loss_weights=_weights(**{role: 0.0}))
        for k in base:  # only the text loss weight moves
          if k not in ("doc", "txt_loss_w"):
            np.testing.assert_array_equal(enc[k], base[k])
        if role not in roles:
          np.testing.assert_array_equal(enc["txt_loss_w"], base["txt_loss_w"])
        elif roles == {role}:  # the document's only text: its whole text loss goes
          assert not enc["txt_loss_w"].any() and base["txt_loss_w"].any()
  # VQA without questions: the answer's tokens and its EOS are left, each at weight 1 (the
  # last question token predicts the answer's first token, so it stays).
  doc = _doc("vqa", 1)
  answer = tok.encode([p for p in doc.parts if isinstance(p, documents.Text)][1].text)
  enc = encoding.encode_document(doc, tok, P, text_loss_weights=_weights(question=0.0))
  (idx,) = np.nonzero(enc["txt_kind"] == Kind.TXT)
  kept = np.zeros_like(enc["txt_loss_w"])
  kept[idx[-len(answer) - 2:-1]] = 1.0  # predicting the answer's tokens, then EOS
  np.testing.assert_array_equal(enc["txt_loss_w"], kept)
  # BOS, <img>, </img>, question, answer, EOS: BOS -> <img> counts as the question's
  assert enc["doc"]["text_tokens"] == {"question": len(idx) - len(answer) - 3,
                                       "answer": len(answer) + 1}


def test_weights_scale_by_role_and_are_counted(tok):
  doc = _doc("vqa", 2)
  base = encoding.encode_document(doc, tok, P)
  enc = encoding.encode_document(doc, tok, P,
                                 text_loss_weights=_weights(question=0.25, answer=2.0))
  n = enc["doc"]["text_tokens"]
  assert sum(n.values()) == base["txt_loss_w"].sum()
  assert enc["txt_loss_w"].sum() == pytest.approx(0.25 * n["question"] + 2.0 * n["answer"])
  assert set(np.unique(enc["txt_loss_w"])) == {0.0, 0.25, 2.0}


def test_batches_with_prompts_at_zero(config, tmp_path):
  """Packed batches of t2i + VQA: prompts weighing 0 zero the t2i documents' text positions
  and nothing else (same rows, same other fields); the metrics give prompts no share."""
  config.data.doc_weights = ml_collections.ConfigDict({"t2i": 1.0, "vqa": 1.0})
  config.data.cond_dropout = 0.0  # a dropped prompt leaves a t2i document with plain text
  tok = pipeline.make_tokenizer(config, str(tmp_path))
  base_it = pipeline.make_pipeline(config, tok)
  base = [next(base_it) for _ in range(2)]
  config.data.text_loss_weights = ml_collections.ConfigDict({"prompt": 0.0})
  it = pipeline.make_pipeline(config, tok)
  new = [next(it) for _ in range(2)]
  n_t2i = 0
  for b, n in zip(base, new):
    for k in b:
      if k != "txt_loss_w":
        np.testing.assert_array_equal(n[k], b[k], err_msg=k)
    for r in range(b["txt_kind"].shape[0]):
      for s in np.unique(b["txt_segment"][r][b["txt_segment"][r] > 0]):
        at = b["txt_segment"][r] == s
        t2i = (b["vis_kind"][r][b["vis_segment"][r] == s] == Kind.NVAE).any()
        n_t2i += t2i
        want = np.zeros_like(b["txt_loss_w"][r][at]) if t2i else b["txt_loss_w"][r][at]
        np.testing.assert_array_equal(n["txt_loss_w"][r][at], want)
        assert b["txt_loss_w"][r][at].any()
  assert n_t2i > 0
  m = pipeline.data_metrics(it, text_loss_weights=encoding.role_weights(config.data))
  assert m["data/text_share/prompt"] == 0.0 and m["data/text_tokens/prompt"] > 0
  assert m["data/text_share/question"] + m["data/text_share/answer"] == pytest.approx(1.0)
  m = pipeline.data_metrics(base_it)
  assert 0 < m["data/text_share/prompt"] < 1
  assert sum(v for k, v in m.items() if k.startswith("data/text_share/")) == pytest.approx(1.0)


def test_bad_weights_stop_the_start_naming_the_key(config, tmp_path):
  config.data.text_loss_weights = ml_collections.ConfigDict({"promt": 0.0})
  with pytest.raises(ValueError, match=r"config.data.text_loss_weights.promt: unknown text "
                                       r"role; the roles are \('plain', 'prompt'"):
    loop.train(config, str(tmp_path / "run"))
  config.data.text_loss_weights = ml_collections.ConfigDict({"answer": -1.0})
  with pytest.raises(ValueError, match=r"data.text_loss_weights.answer = -1.0: must be"):
    loop.train(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()  # refused before anything was written
  config.data.text_loss_weights = ml_collections.ConfigDict({"question": 0.0})
  assert config_schema.problems(config) == []  # all-zero entries are a valid choice


def test_records_carry_roles_and_count_bad_ones():
  doc = world.make_document(0, 3, S, {"vqa": 1.0})
  back = records.to_document(records.dumps(records.from_document(doc, "w")), image_root=None,
                             resolution=None)
  assert back.parts[1:] == doc.parts[1:] and back.parts[2].role == "answer"
  text = {"type": "text", "text": "a red circle"}
  rec = {"id": "r", "parts": [text, text | {"role": "answr"}, text | {"role": 3},
                               text | {"role": "caption"}]}
  got = records.to_document(rec, image_root=None, resolution=None)
  assert [p.role for p in got.parts] == ["plain", "plain", "plain", "caption"]
  assert records.issues_of(got) == [
      ("text/unknown_role", "r/parts/1 ('answr'; known: plain, prompt, instruction, question,"
                            " answer, caption, story)"),
      ("json/wrong_type:role", "r/parts/2 (int)")]
  assert all(records.is_repair(r) for r, _ in records.issues_of(got))


def test_tiny_cpu_textw_argument():
  exp = config_args.load_experiment(TINY_CPU)
  default = config_schema.leaves(exp.get_config())
  assert "data.text_loss_weights" not in default
  assert config_schema.leaves(exp.get_config("textw=none")) == default
  answers = config_schema.leaves(exp.get_config("textw=answers"))
  assert dict(answers.pop("data.text_loss_weights")) == {
      "prompt": 0.3, "instruction": 0.3, "question": 0.0, "answer": 1.0, "caption": 1.0,
      "story": 1.0}
  assert answers == default
  for preset in exp.TEXT_WEIGHTS:  # every preset names real roles
    w = encoding.role_weights(exp.get_config(f"textw={preset}").data)
    assert w is None if preset == "none" else w["plain"] == 1.0
  with pytest.raises(ValueError, match="textw='all'"):
    exp.get_config("textw=all")
