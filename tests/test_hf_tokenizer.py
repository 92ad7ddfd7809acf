"""Hugging Face tokenizer.json as config.data.tokenizer (data/hf_tokenizer.py): ids equal
transformers' own, user text never yields a special id (nor `<img>` with the world's
sentencepiece), the start-up errors, the workdir / checkpoint round trip, the packer's count of
literals, and the sampler's emittable ids. No JAX compile here."""

import json
import os

import ml_collections
import numpy as np
import pytest

from mogao_jax.data import check
from mogao_jax.data import documents
from mogao_jax.data import encoding
from mogao_jax.data import hf_tokenizer
from mogao_jax.data import pipeline
from mogao_jax.data import tokenizer as tokenizer_lib
from tests import partskit
from tests.configs import tiny_config

# Capitals, digits, accents, CJK, whitespace runs, and text the world never says.
TEXTS = ["Hello World! 2026-12-07: 42 red CIRCLES.", "Café, naïve, Über; señor Øresund",
         "你好，世界。日本語のテキスト。", "  two  spaces\tand a tab\nnew line  ",
         "a small red circle left of a big blue square", "emoji 🙂 and ∑ ≠ ∞", ""]
# Added tokens typed in text (scraped HTML, chat logs): special and not-special ones.
LITERALS = ["see <|vision_start|> here </|vision_end|> <|vision_end|>",
            "<|endoftext|><|im_start|>user\nhi<|im_end|>", "call <tool_call>{}</tool_call>"]


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
  return partskit.write_qwen_tokenizer(str(tmp_path_factory.mktemp("qwen2")))


@pytest.fixture(scope="module")
def tok(qwen_dir, tmp_path_factory):
  return tokenizer_lib.use_file(qwen_dir, str(tmp_path_factory.mktemp("work")))


@pytest.fixture(scope="module")
def reference(qwen_dir):
  transformers = pytest.importorskip("transformers")
  return transformers.AutoTokenizer.from_pretrained(qwen_dir)


def test_ids_equal_transformers(tok, reference):
  for text in TEXTS:
    want = reference(text, add_special_tokens=False).input_ids
    assert tok.encode(text) == want, text
    assert tok.decode(want) == reference.decode(want)
  assert tok.decode(tok.encode(TEXTS[2])) == TEXTS[2]  # NFC text round-trips exactly
  # the special roles: Qwen2's delimiters, eos / pad from its tokenizer_config.json, no bos
  # there (so bos = eos, the document separator of its pretraining)
  ids = reference.convert_tokens_to_ids(["<|vision_start|>", "<|vision_end|>", "<|endoftext|>"])
  assert [tok.img_open_id, tok.img_close_id, tok.eos_id] == ids
  assert tok.pad_id == reference.pad_token_id == tok.bos_id == tok.eos_id
  assert tok.vocab_size == len(reference) == 470 + len(partskit.QWEN_ADDED)


def test_added_tokens_in_user_text_stay_text(tok, reference):
  added = set(range(470, tok.vocab_size))
  for text in LITERALS:
    ids = tok.encode(text)
    assert not added & set(ids), text
    assert tok.decode(ids) == text
    assert tok.special_literals(text)
    # transformers' own plain-text encoding of special tokens gives the same ids (it has no
    # such switch for the not-special `<tool_call>`)
    if "tool_call" not in text:
      assert ids == reference(text, add_special_tokens=False, split_special_tokens=True).input_ids
  assert reference("<tool_call>", add_special_tokens=False).input_ids == [484]  # what we avoid
  assert tok.special_literals(TEXTS[0]) == []


def test_world_sentencepiece_keeps_typed_delimiters_as_text(tmp_path):
  c = tiny_config()
  sp = pipeline.make_tokenizer(c, str(tmp_path))
  ids = sp.encode("a red <img> circle </img>")
  assert sp.img_open_id not in ids and sp.img_close_id not in ids
  assert sp.encode("a red circle") == sp._sp.encode("a red circle")  # plain text unchanged
  assert sp.special_literals("x </img>") == ["</img>"]


def test_packer_and_data_doctor_count_literals(tok):
  doc = documents.Document([documents.Text(LITERALS[0]), documents.Text("fine")],
                           meta={documents.ID: "doc-7"})
  info = encoding.encode_document(doc, tok, 4)["doc"]
  assert info["issues"] == [(tokenizer_lib.LITERAL_ISSUE, "doc-7: '<|vision_start|>'")]
  assert check.is_repair(tokenizer_lib.LITERAL_ISSUE)  # the document is kept, as text
  clean = documents.Document([documents.Text(TEXTS[0])], meta={documents.ID: "doc-8"})
  assert encoding.encode_document(clean, tok, 4)["doc"]["issues"] == []


def test_workdir_and_checkpoint_item_round_trip(tok, qwen_dir, tmp_path):
  work = tmp_path / "w"
  tokenizer_lib.write_workdir(tok.files, str(work), "test")
  assert sorted(os.listdir(work)) == ["tokenizer.json", "tokenizer_config.json"]
  assert (work / "tokenizer.json").read_bytes() == open(f"{qwen_dir}/tokenizer.json", "rb").read()
  again = tokenizer_lib.from_files(tokenizer_lib.workdir_files(str(work)))
  assert again.encode(TEXTS[1]) == tok.encode(TEXTS[1]) and again.eos_id == tok.eos_id
  item = tokenizer_lib.to_item(tok.files)
  assert item["model_proto"] == tok.model_proto  # the item's main bytes are the tokenizer.json
  assert tokenizer_lib.from_item(item) == tok.files
  sp = {"tokenizer.model": b"\x0a\x05proto"}
  assert tokenizer_lib.from_item(tokenizer_lib.to_item(sp)) == sp
  tokenizer_lib.write_workdir(sp, str(tmp_path / "w2"), "x")
  with pytest.raises(ValueError, match="w2/tokenizer.model .this run's tokenizer. differs from "
                     "config.data.tokenizer"):
    tokenizer_lib.write_workdir(tok.files, str(tmp_path / "w2"), "config.data.tokenizer")


def test_role_overrides_and_instruct_eos(qwen_dir, tmp_path):
  d = tmp_path / "instruct"
  d.mkdir()
  (d / "tokenizer.json").write_bytes(open(f"{qwen_dir}/tokenizer.json", "rb").read())
  (d / "tokenizer_config.json").write_text(json.dumps(
      {"eos_token": {"content": "<|im_end|>"}, "pad_token": "<|endoftext|>"}))
  t = tokenizer_lib.use_file(str(d), str(tmp_path / "w"))
  assert (t.eos_id, t.pad_id, t.bos_id) == (472, 470, 472)
  t = tokenizer_lib.use_file(str(d / "tokenizer.json"), str(tmp_path / "w2"),
                             specials="img_open=<|image_pad|>, bos=<|im_start|>")
  assert (t.img_open_id, t.bos_id) == (482, 471)
  with pytest.raises(ValueError, match="tokenizer_specials='nope=1': 'nope=1' is not ROLE"):
    hf_tokenizer.parse_overrides("nope=1")


def _config(path, model_vocab, data_vocab=None, text="", relearn=False):
  c = ml_collections.ConfigDict({
      "data": {"tokenizer": path, "vocab_size": data_vocab or model_vocab,
               "tokenizer_relearn": relearn},
      "model": {"vocab_size": model_vocab}, "init": {"text": text}})
  return c


def test_startup_errors_name_the_file_and_key(qwen_dir, tmp_path):
  work = str(tmp_path / "w")
  with pytest.raises(ValueError, match=r"tokenizer='.*qwen2.*' has 492 tokens but "
                     r"config.model.vocab_size=300 \(/parts/qwen2\)"):
    pipeline.make_tokenizer(_config(qwen_dir, 300, text="/parts/qwen2"), work)
  with pytest.raises(ValueError, match="has 492 tokens but config.data.vocab_size=400"):
    pipeline.make_tokenizer(_config(qwen_dir, 512, 400), work)
  assert pipeline.make_tokenizer(_config(qwen_dir, 512, text="/parts/qwen2"), work).eos_id == 470
  # the world's 128 pieces against an imported 512-row embedding: not that LM's tokenizer
  world = str(tmp_path / "world")
  with pytest.raises(ValueError, match=r"128 tokens against the 512-row embedding of "
                     r"/parts/qwen2 \(config.init.text\).*tokenizer_relearn=True"):
    pipeline.make_tokenizer(_config("", 512, 128, text="/parts/qwen2"), world)
  assert pipeline.make_tokenizer(_config("", 512, 128, "/parts/qwen2", True), world).eos_id == 3
  # a tokenizer.json without the image delimiters
  bad = partskit.write_qwen_tokenizer(str(tmp_path / "nodelim"), delimiters=False)
  with pytest.raises(ValueError, match=r"nodelim.*has no token '<\|vision_start\|>' for the role "
                     "img_open.*tokenizer_specials='img_open=TOKEN'"):
    pipeline.make_tokenizer(_config(bad, 512), str(tmp_path / "w3"))
  (tmp_path / "junk.json").write_text("{\"not\": 1}")
  with pytest.raises(ValueError, match="junk.json.*not a Hugging Face tokenizer.json"):
    pipeline.make_tokenizer(_config(str(tmp_path / "junk.json"), 512), str(tmp_path / "w4"))
  with pytest.raises(FileNotFoundError, match=r"tokenizer='.*empty': no tokenizer.json there"):
    os.makedirs(tmp_path / "empty")
    pipeline.make_tokenizer(_config(str(tmp_path / "empty"), 512), str(tmp_path / "w5"))


def test_emittable_ids(tok):
  ok = tokenizer_lib.emittable(tok, 512)
  assert ok.shape == (512,) and not ok[tok.vocab_size:].any()  # padding rows of the embedding
  assert ok[tok.eos_id] and ok[tok.img_open_id] and ok[:470].all()
  others = [i for i in range(470, tok.vocab_size) if i not in (tok.eos_id, tok.img_open_id)]
  assert not ok[others].any()  # `</|vision_end|>`, `<|im_start|>`, `<tool_call>` ...
  sp_ok = tokenizer_lib.emittable(tokenizer_lib.train(128, ["a red circle", "a blue square"]), 160)
  np.testing.assert_array_equal(np.flatnonzero(~sp_ok[:6]), [0, 1, 2, 5])  # pad unk bos </img>
  assert not sp_ok[128:].any()
