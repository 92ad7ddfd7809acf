"""Every text is valid Unicode before it is tokenized (issue 31 item 5): random records with
lone surrogates, pairs, noncharacters, NUL, CJK and combining marks never raise, and the
audit's record `a\\ud800b` passes the dataset doctor and the training pipeline."""

import json

import numpy as np
import pytest

from mogao_jax.data import check
from mogao_jax.data import pipeline
from mogao_jax.data import records

_POOLS = (
    (0xD800, 0xDFFF),  # surrogates: lone, reversed, paired
    (0xDC80, 0xDCFF),  # surrogateescape'd bytes
    (0xFDD0, 0xFDEF), (0xFFFE, 0xFFFF), (0x10FFFE, 0x10FFFF),  # noncharacters
    (0x0, 0x1F),  # NUL and the other C0 controls
    (0x4E00, 0x9FFF),  # CJK
    (0x0300, 0x036F),  # combining marks
    (0x20, 0x7E), (0x80, 0x10FFFF),  # ASCII, anything
)


def _random_text(rng: np.random.Generator) -> str:
  n = int(rng.integers(0, 24))
  chars = []
  for _ in range(n):
    lo, hi = _POOLS[int(rng.integers(len(_POOLS)))]
    chars.append(chr(int(rng.integers(lo, hi + 1))))
  return "".join(chars)


def test_random_unicode_records_become_valid_text():
  rng = np.random.default_rng(31)
  reasons = set()
  for i in range(3000):
    text = _random_text(rng)
    rec = {"id": _random_text(rng) or f"r{i}", "parts": [{"type": "text", "text": text}]}
    for raw in (rec, json.dumps(rec)):  # a dict and a JSONL line ("\\ud800" escapes)
      doc = records.to_document(raw, image_root=None, resolution=16, source="s")
      for part in doc.parts:
        part.text.encode("utf-8")  # strict: raises on any lone surrogate
      doc.meta["id"].encode("utf-8")
      reasons |= {r for r, _ in doc.meta["issues"]}
      has_lone = any(0xD800 <= ord(c) <= 0xDFFF for c in text)
      if not has_lone and text:
        assert doc.parts[0].text == text  # valid text is never touched
  assert {"text/invalid_unicode", "text/invalid_utf8"} <= reasons


def test_surrogates_repaired_by_reason():
  def fix(text):
    doc = records.to_document({"id": "uc", "parts": [{"type": "text", "text": text}]},
                              image_root=None, resolution=16)
    return doc.parts[0].text, [r for r, _ in doc.meta["issues"]]
  assert fix("a\ud800b") == ("a\ufffdb", ["text/invalid_unicode"])
  assert fix("a\ude00") == ("a\ufffd", ["text/invalid_unicode"])
  assert fix("\ud83d\ude00!") == ("\U0001F600!", [])  # a pair is its character
  assert fix("x\udce9") == ("x\ufffd", ["text/invalid_utf8"])  # an escaped byte
  assert fix("\x00\ufffe\u4e2d\u0301") == ("\x00\ufffe\u4e2d\u0301", [])


@pytest.fixture(scope="module")
def audit_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("uc") / "uc.jsonl"
  recs = [{"id": "uc", "parts": [{"type": "text", "text": "a\ud800b"}]},
          {"id": "ok", "parts": [{"type": "text", "text": "a plain one"}]}]
  path.write_text("".join(json.dumps(r) + "\n" for r in recs))
  return str(path)


def test_audit_record_passes_doctor_and_pipeline(config, audit_file, tmp_path):
  rep = check.run(config, source=f"jsonl:{audit_file}", limit=0, workdir=str(tmp_path))
  st = rep["stats"]
  assert st["docs_packed"] == 2 and st["issues"] == {"text/invalid_unicode": 1}
  c = check.with_source(config, f"jsonl:{audit_file}")
  c.data.num_shards = 2  # one record each (the default 8 shards would leave 6 with none)
  tok = pipeline.make_tokenizer(c, str(tmp_path))
  it = pipeline.make_pipeline(c, tok)
  batch = next(it)
  assert batch["txt_token"].shape[0] == c.data.batch_size
  st = pipeline.packing_stats(it)
  assert st["issues"]["text/invalid_unicode"] >= 1 and st["dropped_empty"] == 0
