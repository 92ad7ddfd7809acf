"""The run's tokenizer, one interface for two kinds (encode, decode, vocab_size, the special ids,
`special_literals`, `plain_ids`, `files`):

* sentencepiece (`Tokenizer`, the world's default): trained from the world's text on first use,
  or a file trained on any source (`python -m mogao_jax.data.train_tokenizer`). Ids: pad = 0,
  unk = 1, bos = 2, eos = 3, then the user-defined `<img>` = 4 and `</img>` = 5, so a
  zero-filled slot is padding and the image delimiters are always single tokens.
* a Hugging Face tokenizer.json (data/hf_tokenizer.py), e.g. the imported Qwen2's own.

User text never yields a special id: the delimiters and added tokens typed in text are encoded
as plain text (and counted by the packer as `text/special_token_literal`). The workdir holds the
run's copy under the kind's own file name (tokenizer.model, or tokenizer.json +
tokenizer_config.json); checkpoints carry the same bytes (`to_item` / `from_item`).
"""

from __future__ import annotations

import io
import os
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from mogao_jax.data import hf_tokenizer

MODEL_FILE = "tokenizer.model"
IMG_OPEN, IMG_CLOSE = "<img>", "</img>"
LITERAL_ISSUE = "text/special_token_literal"
# Fewer pieces than this fraction of an imported LM's embedding rows: not that LM's tokenizer
# (Qwen2 pads 151,665 pieces to 151,936 or 152,064 rows, 99.7% or more).
_MIN_COVER = 0.9


class Tokenizer:
  """A thin wrapper over a SentencePieceProcessor with the ids the packer needs."""

  kind = "sentencepiece"

  def __init__(self, model_proto: bytes):
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.model_proto = model_proto
    self.pad_id = self._sp.pad_id()
    self.unk_id = self._sp.unk_id()
    self.bos_id = self._sp.bos_id()
    self.eos_id = self._sp.eos_id()
    self.img_open_id = self._sp.piece_to_id(IMG_OPEN)
    self.img_close_id = self._sp.piece_to_id(IMG_CLOSE)
    if self.pad_id != 0 or self.unk_id in (self.img_open_id, self.img_close_id):
      raise ValueError("tokenizer model lacks pad=0 or the <img>/</img> symbols")

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  @property
  def files(self) -> dict[str, bytes]:
    return {MODEL_FILE: self.model_proto}

  def encode(self, text: str) -> list[int]:
    """Sentencepiece matches the user-defined `<img>` / `</img>` anywhere in text (control
    symbols never): such a match is replaced by its characters' pieces (unk where the model
    has none), so it stays text."""
    out = []
    for i in self._sp.encode(text):
      if i in (self.img_open_id, self.img_close_id):
        out += [self._sp.piece_to_id(c) for c in self._sp.id_to_piece(i)]
      else:
        out.append(i)
    return out

  def special_literals(self, text: str) -> list[str]:
    return [t for t in (IMG_OPEN, IMG_CLOSE) if t in text]

  def plain_ids(self) -> np.ndarray:
    """Ids that decode to text: all but control, unknown, unused and the delimiter pieces."""
    sp = self._sp
    return np.array([i for i in range(sp.get_piece_size())
                     if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i))
                     and i not in (self.img_open_id, self.img_close_id)], np.int64)

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode([int(i) for i in ids])


def train(vocab_size: int, corpus_lines: Iterable[str]) -> Tokenizer:
  """Trains a BPE model in memory, deterministically (one thread, no sampling or shuffling).

  BPE, not unigram: on a corpus this small unigram splits even common words into letters.
  With hard_vocab_limit=False the vocab may come out smaller than requested; the request is
  recorded in the model's trainer_spec so `train_or_load` can tell a cached model matches.
  """
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(list(corpus_lines)), model_writer=buf,
      vocab_size=vocab_size, model_type="bpe", hard_vocab_limit=False,
      character_coverage=1.0, pad_id=0, unk_id=1, bos_id=2, eos_id=3,
      user_defined_symbols=[IMG_OPEN, IMG_CLOSE], num_threads=1,
      shuffle_input_sentence=False, input_sentence_size=0, minloglevel=2)
  m = sentencepiece_model_pb2.ModelProto()
  m.ParseFromString(buf.getvalue())
  m.trainer_spec.vocab_size = vocab_size
  return Tokenizer(m.SerializeToString())


def requested_vocab_size(model_proto: bytes) -> int:
  """The vocab size the model was asked for (its trainer_spec), not its actual size."""
  m = sentencepiece_model_pb2.ModelProto()
  m.ParseFromString(model_proto)
  return m.trainer_spec.vocab_size


def train_or_load(workdir_path: str, vocab_size: int, corpus_lines: Iterable[str]) -> Tokenizer:
  """Loads `workdir/tokenizer.model` if present, else trains one and caches it there."""
  path = os.path.join(workdir_path, MODEL_FILE)
  if os.path.exists(os.path.join(workdir_path, hf_tokenizer.JSON_FILE)):
    raise ValueError(f"{workdir_path}/{hf_tokenizer.JSON_FILE}: this run was trained with a "
                     "Hugging Face tokenizer but config.data.tokenizer is empty; set it (or use "
                     "a fresh workdir)")
  if os.path.exists(path):
    with open(path, "rb") as f:
      proto = f.read()
    cached = requested_vocab_size(proto)
    if cached != vocab_size:
      raise ValueError(f"{path} was trained with vocab_size={cached} but config.data.vocab_size="
                       f"{vocab_size}; delete it or use a fresh workdir")
    return Tokenizer(proto)
  tok = train(vocab_size, corpus_lines)
  os.makedirs(workdir_path, exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"  # atomic: several processes may share one workdir
  with open(tmp, "wb") as f:
    f.write(tok.model_proto)
  os.replace(tmp, path)
  return tok


def from_files(files: dict[str, bytes], where: str = "the tokenizer") -> "Tokenizer | hf_tokenizer.HFTokenizer":
  """The tokenizer of its files (`Tokenizer.files` / `HFTokenizer.files`)."""
  if hf_tokenizer.JSON_FILE in files:
    if hf_tokenizer.CONFIG_FILE not in files:
      raise ValueError(f"{where}: a {hf_tokenizer.JSON_FILE} without its "
                       f"{hf_tokenizer.CONFIG_FILE}")
    return hf_tokenizer.HFTokenizer(files[hf_tokenizer.JSON_FILE],
                                    files[hf_tokenizer.CONFIG_FILE], where)
  return Tokenizer(files[MODEL_FILE])


# A checkpoint's `tokenizer` item: the main file under "model_proto" (a sentencepiece model, or
# a tokenizer.json: what older checkpoints and readers of the item expect) + the HF config.
_ITEM_KEYS = {"model_proto": (MODEL_FILE, hf_tokenizer.JSON_FILE),
              "tokenizer_config": (hf_tokenizer.CONFIG_FILE,)}


def to_item(files: dict[str, bytes]) -> dict[str, bytes]:
  return {k: files[n] for k, names in _ITEM_KEYS.items() for n in names if n in files}


def from_item(item: dict[str, bytes]) -> dict[str, bytes]:
  """Inverse of `to_item`: the main file's name is told by its content (JSON or protobuf)."""
  main = item["model_proto"]
  if not main.lstrip().startswith(b"{"):
    return {MODEL_FILE: main}
  return {hf_tokenizer.JSON_FILE: main, hf_tokenizer.CONFIG_FILE: item.get("tokenizer_config",
                                                                            b"{}")}


def workdir_files(workdir_path: str) -> dict[str, bytes]:
  """The run's tokenizer files in a workdir ({} when none): tokenizer.json (+ its config), or
  tokenizer.model."""
  for names in ((hf_tokenizer.JSON_FILE, hf_tokenizer.CONFIG_FILE), (MODEL_FILE,)):
    if os.path.isfile(os.path.join(workdir_path, names[0])):
      out = {}
      for n in names:
        p = os.path.join(workdir_path, n)
        if os.path.isfile(p):
          with open(p, "rb") as f:
            out[n] = f.read()
      return out
  return {}


def write_workdir(files: dict[str, bytes], workdir_path: str, key: str) -> None:
  """Makes `files` the workdir's tokenizer; a different one already there (an earlier run's)
  is refused, naming `key`."""
  have = workdir_files(workdir_path)
  if have:
    if have != files:
      raise ValueError(f"{workdir_path}/{next(iter(have))} (this run's tokenizer) differs from "
                       f"{key}; use a fresh workdir, or delete it if no checkpoint was trained "
                       "with it")
    return
  os.makedirs(workdir_path, exist_ok=True)
  for name, data in files.items():
    dest = os.path.join(workdir_path, name)
    tmp = f"{dest}.tmp{os.getpid()}"  # atomic: several processes may share one workdir
    with open(tmp, "wb") as f:
      f.write(data)
    os.replace(tmp, dest)


def use_file(path: str, workdir_path: str, key: str = "config.data.tokenizer",
             specials: str = ""):
  """Loads a sentencepiece model file (`python -m mogao_jax.data.train_tokenizer`) or a
  Hugging Face tokenizer.json (or a directory holding one; `specials` = the role overrides of
  config.data.tokenizer_specials) and makes it the workdir's tokenizer (what checkpoints,
  sampling and evaluation read)."""
  is_hf = (os.path.isdir(path) or path.endswith(".json")
           or (os.path.isfile(path) and _starts_with_brace(path)))
  if is_hf:
    files = hf_tokenizer.read_files(path, hf_tokenizer.parse_overrides(specials), key)
    tok = from_files(files, f"{key}={path!r}")
  else:
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{key}={path!r}: no such file; train one with "
                              "`python -m mogao_jax.data.train_tokenizer --source ... --out ...`"
                              ", or give a Hugging Face tokenizer.json")
    with open(path, "rb") as f:
      proto = f.read()
    try:
      tok = Tokenizer(proto)
    except (RuntimeError, ValueError) as e:
      raise ValueError(f"{key}={path!r} is not a usable sentencepiece model: {e}") from e
  write_workdir(tok.files, workdir_path, f"{key}={path!r}")
  return tok


def _starts_with_brace(path: str) -> bool:
  with open(path, "rb") as f:
    return f.read(64).lstrip().startswith(b"{")


def check_vocab(tokenizer, model_vocab_size: int, what: str = "tokenizer", *,
                data_vocab_size: int = 0, imported: str = "", relearn: bool = False) -> None:
  """Raises if the model's embedding table cannot hold every token id, or (`imported`: the LM
  whose embedding is loaded) if the tokenizer is evidently not that LM's: far fewer pieces than
  embedding rows, unless `relearn` (config.data.tokenizer_relearn) says the rows are learned
  anew."""
  n = tokenizer.vocab_size
  if n > model_vocab_size:
    raise ValueError(f"{what} has {n} tokens but config.model.vocab_size={model_vocab_size}"
                     f"{f' ({imported})' if imported else ''}: its ids would index past the "
                     "embedding; raise config.model.vocab_size or use the model's tokenizer")
  if data_vocab_size and n > data_vocab_size:
    raise ValueError(f"{what} has {n} tokens but config.data.vocab_size={data_vocab_size}; "
                     "raise config.data.vocab_size")
  if imported and not relearn and n < _MIN_COVER * model_vocab_size:
    raise ValueError(f"{what} has {n} tokens against the {model_vocab_size}-row embedding of "
                     f"{imported} (config.init.text): not that model's tokenizer. Use its "
                     "tokenizer.json, or set config.data.tokenizer_relearn=True to learn the "
                     "embedding anew")


def emittable(tokenizer, vocab_size: int) -> np.ndarray:
  """bool [vocab_size]: the ids the sampler may emit, THE restriction of every sampling path
  (generate, evaluate, the training hooks, the HTML report all sample through engine.Sampler;
  the torch export's torch_generate.py reads it from generation.json):
  the ids the tokenizer decodes to text (`plain_ids`) plus eos and the image-open delimiter.
  Embedding rows past the tokenizer (Qwen2 pads 151,665 pieces to 151,936), reserved and other
  special ids (bos, pad, unk, `</img>`, added tokens) are never drawn."""
  ok = np.zeros(vocab_size, bool)
  ids = np.asarray(tokenizer.plain_ids(), np.int64)
  ok[ids[ids < vocab_size]] = True
  for i in (tokenizer.eos_id, tokenizer.img_open_id):
    if 0 <= i < vocab_size:
      ok[i] = True
  return ok
