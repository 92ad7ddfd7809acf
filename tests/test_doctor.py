"""The dataset doctor (python -m mogao_jax.data.check) on a tiny JSONL folder with bad inputs."""

import subprocess
import sys

import pytest

from mogao_jax.data import check
from mogao_jax.data import pipeline
from mogao_jax.data.sources import jsonl
from mogao_jax.data.sources import synthetic
from tests import sourcekit
from tests.configs import REPO, TINY_CPU


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  return sourcekit.web_corpus(tmp_path_factory.mktemp("doctor"), 12, seed=7, bad=True)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A tokenizer cache shared by the tests (the world tokenizer)."""
  from tests.configs import tiny_config
  wd = tmp_path_factory.mktemp("tok")
  pipeline.make_tokenizer(tiny_config(), str(wd))
  return str(wd)


def test_report_counts_every_bad_input_with_its_example(config, corpus, workdir):
  n = len(jsonl.JsonlSource(corpus))
  rep = check.run(config, source=f"jsonl:{corpus}?name=web", limit=0, workdir=workdir)
  st = rep["stats"]
  assert rep["limit"] == n and st["source_docs"] == {"web": n}  # one pass: every line once
  assert st["docs_packed"] + st["dropped_empty"] + st["dropped_oversize"] == n
  for reason in synthetic.BAD.values():
    assert st["issues"][reason] == 1, reason
  ex = st["issue_examples"]
  assert "nope.png" in ex["image/missing_file"] and "truncated.png" in ex["image/truncated"]
  assert "empty.png" in ex["image/empty"]
  assert ex["record/undecodable"].startswith(f"{corpus}:{n - 5}")  # the invalid JSON line
  text = check.format_report(rep)
  skips = 6 + st["dropped_oversize"]  # the bad inputs + documents too long to cut (doc/oversize)
  for want in ("documents read", "rows packed", "packing efficiency  text", "skips (data "
               f"dropped): {skips}", "image/missing_file", "bad-missing_file/parts/1", "web  "):
    assert want in text, want
  assert "repairs (data kept)" in text


def test_limit_beyond_the_file_reads_it_once(config, corpus, workdir):
  n = len(jsonl.JsonlSource(corpus))
  rep = check.run(config, source=f"jsonl:{corpus}?name=web", limit=2000, workdir=workdir)
  st = rep["stats"]
  assert rep["limit"] == n and check.docs_read(st) == n  # no second pass over the file
  assert all(st["issues"][reason] == 1 for reason in synthetic.BAD.values())


def test_world_and_limit(config, workdir):
  rep = check.run(config, limit=40, workdir=workdir)
  st = rep["stats"]
  assert check.docs_read(st) == 40 and st["source_docs"] == {"world": 40}
  assert "skips (data dropped): none" in check.format_report(rep)
  roles = st["text_tokens"]  # the world's roles, each a share of the text loss
  assert {"prompt", "caption", "question", "answer"} <= set(roles)
  assert f"prompt {roles['prompt']} (" in check.format_report(rep)


def test_command_line(corpus):
  out = subprocess.run(
      [sys.executable, "-m", "mogao_jax.data.check", "--config", f"{TINY_CPU}:res=16",
       "--source", f"jsonl:{corpus}", "--limit", "0",
       "--config.data.batch_size=4"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "documents read" in out.stdout and "image/truncated" in out.stdout
  assert "(limit 18)" in out.stdout and "batches of up to 4" in out.stdout
