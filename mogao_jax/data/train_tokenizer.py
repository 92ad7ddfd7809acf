"""Train a sentencepiece tokenizer on the text of a source.

    python -m mogao_jax.data.train_tokenizer --source jsonl:/data/docs.jsonl --vocab_size 32000 \\
        --out /data/tokenizer.model [--limit 100000]

Text parts of the first `--limit` records (0 = all), split into lines (long ones cut between
words into pieces of at most 4000 bytes, which sentencepiece keeps), train a BPE model through
`tokenizer.train`, so the special ids are the pipeline's: pad 0, unk 1, bos 2, eos 3, `<img>` 4,
`</img>` 5. `--source world` trains on the corpus the pipeline uses by default. A run uses the file
with `config.data.tokenizer=/data/tokenizer.model` (config.model.vocab_size must hold it).
"""

from __future__ import annotations

import os
from typing import Iterator

from absl import app
from absl import flags
from absl import logging

from mogao_jax.data import tokenizer as tokenizer_lib
from mogao_jax.data.sources import specs as specs_lib
from mogao_jax.data import pipeline
from mogao_jax.data.sources import world

MAX_LINE_BYTES = 4000  # under sentencepiece's max_sentence_length (4192 bytes)


def text_lines(spec: str, limit: int = 0) -> Iterator[str]:
  """Every non-empty line of every text part of the first `limit` records (0 = all); records
  that do not parse are skipped. `world`: the corpus the pipeline's default tokenizer uses."""
  s = specs_lib.parse(spec)
  if s.kind == "world":
    n = pipeline._TOKENIZER_CORPUS_SCENES  # pylint: disable=protected-access
    yield from world.world_text_corpus(n)
    return
  src = specs_lib.open_source(s)
  for i in range(len(src) if limit <= 0 else min(limit, len(src))):
    rec = src[i]  # None: not a record
    parts = rec.get("parts") if rec is not None else None
    for part in parts if isinstance(parts, list) else ():
      text = part.get("text") if isinstance(part, dict) and part.get("type") == "text" else None
      if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
      if isinstance(text, str):
        for ln in text.splitlines():
          yield from _pieces(ln)


def _pieces(line: str, max_bytes: int = MAX_LINE_BYTES) -> Iterator[str]:
  """A non-blank line in pieces of at most `max_bytes` UTF-8 bytes, cut between words
  (sentencepiece's trainer skips longer sentences; web text has long paragraphs)."""
  if not line.strip():
    return
  if len(line.encode("utf-8")) <= max_bytes:
    yield line
    return
  piece, size = [], 0
  for word in line.split():
    n = len(word.encode("utf-8")) + 1
    if piece and size + n > max_bytes:
      yield " ".join(piece)
      piece, size = [], 0
    piece.append(word[:max_bytes // 4])  # a giant "word" (e.g. a URL) is cut
    size += min(n, max_bytes // 4 + 1)
  if piece:
    yield " ".join(piece)


def train_file(source: str, vocab_size: int, out: str, limit: int = 0) -> tokenizer_lib.Tokenizer:
  """Trains on `source` and writes the model to `out` atomically; returns the tokenizer."""
  lines = list(text_lines(source, limit))
  if not lines:
    raise ValueError(f"--source={source!r} has no text parts (limit={limit})")
  tok = tokenizer_lib.train(vocab_size, lines)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  tmp = f"{out}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(tok.model_proto)
  os.replace(tmp, out)
  logging.info("tokenizer: %d lines (%d chars) of %s -> %s: %d pieces (asked %d); pad %d unk %d "
               "bos %d eos %d <img> %d </img> %d", len(lines), sum(map(len, lines)), source, out,
               tok.vocab_size, vocab_size, tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id,
               tok.img_open_id, tok.img_close_id)
  return tok


def define_flags() -> None:
  """The command's flags (defined only when run as a command: other data tools share names)."""
  flags.DEFINE_string("source", None, "source spec (data/sources/specs.py): "
                      "jsonl:PATH | arrayrecord:PATTERN | tfds:NAME | world")
  flags.DEFINE_integer("vocab_size", None, "requested vocabulary size (BPE may give fewer)")
  flags.DEFINE_string("out", None, "output .model file")
  flags.DEFINE_integer("limit", 0, "read only the first N records (0 = all)")
  flags.mark_flags_as_required(["source", "vocab_size", "out"])


def main(argv):
  del argv
  f = flags.FLAGS
  tok = train_file(f.source, f.vocab_size, f.out, f.limit)
  print(f"wrote {f.out}: {tok.vocab_size} pieces; use config.data.tokenizer={f.out} "
        f"with config.model.vocab_size >= {tok.vocab_size}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
