"""Sources: the spec syntax, JSONL, ArrayRecord, the TFDS builder round trip, each in the
pipeline."""

import os
import pickle
import subprocess
import sys

import pytest

from mogao_jax.data import batch as batch_lib
from mogao_jax.data import pipeline
from mogao_jax.data import records
from mogao_jax.data.sources import arrayrecord
from mogao_jax.data.sources import jsonl
from mogao_jax.data.sources import specs
from mogao_jax.data.sources import tfds_interleaved
from tests import sourcekit
from tests.configs import REPO


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """A web-like JSONL folder with one of each bad input (synthetic.BAD)."""
  return sourcekit.web_corpus(tmp_path_factory.mktemp("web"), 24, bad=True)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  from tests.configs import tiny_config
  return pipeline.make_tokenizer(tiny_config(), str(tmp_path_factory.mktemp("tok")))


# ----------------------------------------------------------------------------- spec syntax

def test_spec_syntax_and_errors(tmp_path):
  s = specs.parse("jsonl:/data/web/*.jsonl?images=/data/img&weight=2.5&name=web")
  assert (s.kind, s.target, s.weight, s.name, s.image_root) == (
      "jsonl", "/data/web/*.jsonl", 2.5, "web", "/data/img")
  assert specs.parse("arrayrecord:/x/laion-*.array_record").name == "laion"
  t = specs.parse("tfds:interleaved_docs?data_dir=/d&split=eval")
  assert (t.name, t.option("split"), t.option("data_dir"), t.image_root) == (
      "interleaved_docs", "eval", "/d", None)
  assert specs.parse("world").name == "world"
  for bad, msg in [("webdataset:/x", "unknown kind"), ("jsonl:/x?img=/y", r"unknown option\(s\) \['img'\]"),
                   ("jsonl:/x?weight=0", "weight must be > 0"), ("jsonl:/x?weight=a", "not a number"),
                   ("world:/x", "takes no path"), ("jsonl:", "needs a path"),
                   ("tfds:x?name=a&name=b", "given twice")]:
    with pytest.raises(ValueError, match=msg):
      specs.parse(bad)

  class D(dict):
    get = dict.get
  one = specs.mixture(D(source="jsonl:/a/docs.jsonl?weight=3; arrayrecord:/b/docs.ar"))
  assert [(m.name, m.weight) for m in one] == [("docs", 3.0), ("docs-2", 1.0)]
  listed = specs.mixture(D(source="world", sources=[
      {"spec": "jsonl:/a/web.jsonl", "weight": 0.7}, "world?weight=0.3"]))
  assert [(m.name, m.kind, m.weight) for m in listed] == [("web", "jsonl", 0.7),
                                                          ("world", "world", 0.3)]
  named = specs.mixture(D(sources={"a": "jsonl:/a/x.jsonl", "b": {"spec": "world", "weight": 2}}))
  assert [(m.name, m.weight) for m in named] == [("a", 1.0), ("b", 2.0)]
  assert [(s.kind, s.name) for s in specs.mixture(D(source="world"))] == [("world", "world")]
  with pytest.raises(ValueError, match="used twice"):
    specs.mixture(D(source="world?name=a;jsonl:/x.jsonl?name=a"))
  with pytest.raises(ValueError, match="unknown key"):
    specs.mixture(D(sources=[{"spec": "world", "wieght": 2}]))
  with pytest.raises(FileNotFoundError, match="no file matches"):
    specs.open_source(f"jsonl:{tmp_path}/none*.jsonl")


# ----------------------------------------------------------------------------------- JSONL

def test_jsonl_index_random_access_and_bad_lines(tmp_path):
  (tmp_path / "a.jsonl").write_bytes(
      b'{"id": "a1", "parts": [{"type": "text", "text": "one"}]}\n\n   \n'
      b'{"id": "a2", "parts": [\n'  # invalid JSON
      b'\xff\xfe not utf-8\r\n'
      b'[1, 2]\n'
      b'{"id": "a3", "parts": [{"type": "text", "text": "caf\xc3\xa9"}]}')  # no final newline
  (tmp_path / "b.jsonl").write_bytes(b'{"id": "b1", "parts": [{"type": "text", "text": "x"}]}\n')
  src = specs.open_source(f"jsonl:{tmp_path}/*.jsonl")
  assert len(src) == 6 and src.image_root == str(tmp_path)
  wheres = [src.read(i)[1] for i in range(len(src))]
  assert wheres == [f"{tmp_path}/a.jsonl:{n}" for n in (1, 4, 5, 6, 7)] + [f"{tmp_path}/b.jsonl:1"]
  assert [r and r["id"] for r in (src[i] for i in range(6))] == ["a1", None, None, None, "a3", "b1"]
  assert src[4]["parts"][0]["text"] == "café"
  reasons = []
  for i in range(len(src)):
    raw, where = src.read(i)
    doc = records.to_document(raw, image_root=src.image_root, resolution=16, origin=where)
    reasons.append(sorted({r for r, _ in records.issues_of(doc)}))
  assert reasons[0] == reasons[4] == reasons[5] == []
  assert reasons[1] == ["record/undecodable"] and reasons[3] == ["json/wrong_type:record"]
  assert reasons[2]  # invalid UTF-8 that is not JSON either: counted, not raised
  clone = pickle.loads(pickle.dumps(src))  # Grain workers: descriptors reopen lazily
  assert clone.read(5) == src.read(5)
  with pytest.raises(IndexError):
    src.read(6)


# ----------------------------------------------------------------------------- ArrayRecord

def test_arrayrecord_write_read(tmp_path, corpus):
  recs = sourcekit.inline_records(corpus)
  paths = arrayrecord.write_shards(str(tmp_path / "web"), recs, 3)
  assert len(paths) == 3
  bad = str(tmp_path / "z-bad.array_record")
  assert arrayrecord.write(bad, [b"\x00 not a record", recs[0]]) == 2
  src = specs.open_source(f"arrayrecord:{tmp_path}/*.array_record")
  assert len(src) == len(recs) + 2
  got = [src[i] for i in range(len(src))]
  want_ids = {r["id"] for r in recs}
  assert {g["id"] for g in got if g} == want_ids and got[-2] is None
  by_id = {g["id"]: g for g in got[:-2]}
  for r in recs:  # records in == records out, image bytes included
    assert by_id[r["id"]] == r
  raw, where = src.read(len(src) - 2)
  assert where == f"{bad}#0"
  doc = records.to_document(raw, image_root=None, resolution=16, origin=where)
  assert [r for r, _ in records.issues_of(doc)] == ["record/undecodable"]
  assert pickle.loads(pickle.dumps(src))[len(src) - 1] == recs[0]


# ----------------------------------------------------------------------------------- TFDS

def _check_tfds_roundtrip(folder, src, jsonl_paths):
  """Every JSONL line is one example; structured records come back equal (image paths ->
  the files' bytes), the rest as the line's bytes."""
  got = {}
  for i in range(len(src)):
    raw, where = src.read(i)
    got[where] = raw
  n = 0
  for path in jsonl_paths:
    js = jsonl.JsonlSource(path)
    for i in range(len(js)):
      line, where = js.read(i)
      out, rec = got.pop(where), js[i]
      n += 1
      if isinstance(out, bytes):
        assert out == line
        continue
      assert (out["id"], out["meta"], out.get("kind", "")) == (rec["id"], rec.get("meta", {}),
                                                                rec.get("kind", ""))
      for a, b in zip(rec["parts"], out["parts"], strict=True):
        if a["type"] == "text":
          assert a == b
          continue
        assert b["generate"] == a.get("generate", False)
        full = os.path.join(folder, a["path"])
        if os.path.exists(full):
          assert b["bytes"] == open(full, "rb").read()  # image bytes identical
        else:
          assert b == {"type": "image", "path": a["path"], "generate": False}
  assert not got
  return n


def test_tfds_builder_roundtrip(tmp_path, corpus, tok, config):
  folder = os.path.dirname(corpus)
  builder = tfds_interleaved.build(folder, str(tmp_path / "tfds"))
  assert builder.info.splits["train"].num_examples == len(jsonl.JsonlSource(corpus))
  shards = os.listdir(tmp_path / "tfds" / "interleaved_docs" / "1.0.0")
  assert any(".array_record-" in s for s in shards)
  src = specs.open_source(f"tfds:interleaved_docs?data_dir={tmp_path / 'tfds'}")
  assert _check_tfds_roundtrip(folder, src, [corpus]) == len(src)
  raw_lines = [src.read(i)[0] for i in range(len(src))]
  assert sum(isinstance(r, bytes) for r in raw_lines) == 2  # invalid JSON, a wrong-typed text
  assert pickle.loads(pickle.dumps(src))[0] == src[0]
  # through the training graph: the bad inputs are counted exactly as from the JSONL
  config.data.source = f"tfds:interleaved_docs?data_dir={tmp_path / 'tfds'}&name=web"
  from mogao_jax.data import check
  st = check.run(config, limit=0, workdir=os.path.dirname(tok_path(tok, tmp_path)))["stats"]
  assert st["source_docs"] == {"web": len(src)}
  for reason in ("record/undecodable", "image/missing_file", "image/truncated", "image/empty",
                 "doc/empty", "json/wrong_type:text"):
    assert st["issues"][reason] == 1, reason


def tok_path(tok, tmp_path):
  path = tmp_path / "tokdir" / "tokenizer.model"
  path.parent.mkdir(exist_ok=True)
  path.write_bytes(tok.model_proto)
  return str(path)


def test_tfds_build_command_splits_by_file_name(tmp_path):
  docs = tmp_path / "docs"
  sourcekit.web_corpus(docs, 6, seed=3, name="train-00.jsonl")
  sourcekit.web_corpus(docs, 4, seed=4, name="train-01.jsonl")
  sourcekit.web_corpus(docs, 3, seed=5, name="eval.jsonl")
  out = subprocess.run(
      [sys.executable, "-m", "mogao_jax.data.sources.tfds_interleaved", "--manual_dir",
       str(docs), "--data_dir", str(tmp_path / "tfds")], cwd=REPO, capture_output=True,
      text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  train = tfds_interleaved.open_split(str(tmp_path / "tfds"), "train")
  ev = specs.open_source(f"tfds:interleaved_docs?data_dir={tmp_path / 'tfds'}&split=eval")
  assert (len(train), len(ev)) == (10, 3)
  _check_tfds_roundtrip(str(docs), ev, [str(docs / "eval.jsonl")])


# ------------------------------------------------------------------- each source, packed

@pytest.mark.parametrize("kind", ["jsonl", "arrayrecord"])
def test_file_sources_make_contract_batches(kind, tmp_path, corpus, config, tok):
  if kind == "jsonl":
    spec = f"jsonl:{corpus}?name=src"
  else:
    spec = f"arrayrecord:{sourcekit.arrayrecord_corpus(str(tmp_path), 16)}?name=src"
  config.data.source = spec
  d = config.data
  it = pipeline.make_pipeline(config, tok)
  pd = d.patch_size ** 2 * 3
  for _ in range(2):
    b = next(it)
    batch_lib.check_batch(b, d.l_txt, d.l_vis, pd, pd)
    assert b["txt_kind"].shape == (d.batch_size, d.l_txt)
  m = pipeline.data_metrics(it)
  assert m["data/source_docs/src"] == m["data/docs_read"] > 0
  assert 0 < m["data/eff_txt"] <= 1 and m["data/rows"] >= 2 * d.batch_size
