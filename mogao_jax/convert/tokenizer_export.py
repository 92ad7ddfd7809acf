"""The run's tokenizer as files that ``transformers.AutoTokenizer.from_pretrained`` loads, so
an export encodes text exactly as the run did without mogao_jax.

The run's tokenizer is told by its content: a Hugging Face tokenizer.json (JSON, starts with
'{') is copied with a tokenizer_config.json naming its special tokens; a sentencepiece BPE
model (protobuf) is rebuilt as a ``tokenizers`` BPE of the same pieces, ids and merge order
with sentencepiece's normalisation (its NFKC char map, trimmed and collapsed whitespace,
the "▁" word prefix) and unknown runs fused into one <unk>, as sentencepiece does.
``tokenizer.model`` (the original) is copied beside it for sentencepiece users.

Encoding adds no BOS (as the run's ``Tokenizer.encode``); the model expects ``bos_token`` first.
"""

from __future__ import annotations

import json
import os
import re

from sentencepiece import sentencepiece_model_pb2
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers

from mogao_jax.data import hf_tokenizer

JSON_FILE, CONFIG_FILE = hf_tokenizer.JSON_FILE, hf_tokenizer.CONFIG_FILE
SPM_FILE = "tokenizer.model"
_NORMAL, _UNKNOWN, _CONTROL, _USER = 1, 2, 3, 4  # sentencepiece piece types
_ROLES = ("pad", "unk", "bos", "eos")


def is_json(data: bytes) -> bool:
  return data.lstrip()[:1] == b"{"


def bpe_merges(pieces: list[str], ranks: dict[str, int]) -> list[tuple[str, str]]:
  """Merges of a sentencepiece BPE vocab: every split of a piece into two pieces, ordered by
  the merged piece's rank (sentencepiece merges the best-scored pair first; scores fall with
  the id), ties by the parts' ranks."""
  merges = []
  for piece in pieces:
    local = [(piece[:i], piece[i:]) for i in range(1, len(piece))
             if piece[:i] in ranks and piece[i:] in ranks]
    merges += [(ranks[piece], ranks[a], ranks[b], a, b) for a, b in local]
  return [(a, b) for *_, a, b in sorted(merges)]


def _chars_of(symbols: list[str]) -> str:
  """A regex matching each character of any occurrence of `symbols`, one character a match
  (fixed-length look-behind / look-ahead pin it inside the occurrence)."""
  alts = []
  for s in symbols:
    for k, c in enumerate(s):
      behind = f"(?<={re.escape(s[:k])})" if k else ""
      ahead = f"(?={re.escape(s[k + 1:])})" if k + 1 < len(s) else ""
      alts.append(behind + re.escape(c) + ahead)
  return "|".join(alts)


def from_sentencepiece(model_proto: bytes) -> tuple[tokenizers.Tokenizer, dict]:
  """(tokenizer, tokenizer_config) of a sentencepiece BPE model."""
  m = sentencepiece_model_pb2.ModelProto()
  m.ParseFromString(model_proto)
  if m.trainer_spec.model_type != sentencepiece_model_pb2.TrainerSpec.BPE:
    raise ValueError("tokenizer export: only sentencepiece BPE models convert (the run's is "
                     f"model_type {m.trainer_spec.model_type})")
  pieces = [p.piece for p in m.pieces]
  vocab = {p: i for i, p in enumerate(pieces)}
  normal = {p.piece: i for i, p in enumerate(m.pieces) if p.type == _NORMAL}
  tok = tokenizers.Tokenizer(models.BPE(vocab, bpe_merges(list(normal), normal),
                                        unk_token=m.trainer_spec.unk_piece, fuse_unk=True,
                                        byte_fallback=m.trainer_spec.byte_fallback,
                                        ignore_merges=True))
  # The whole text is normalised at once, as sentencepiece does (added tokens would split it
  # first and each piece would be trimmed and prefixed on its own). A user-defined piece (<img>,
  # </img>) typed in text is the run's characters' pieces (data/tokenizer.py encode: user text
  # never yields a delimiter id), so every character of such an occurrence is its own pre-token.
  norm = []
  if m.normalizer_spec.precompiled_charsmap:
    norm.append(normalizers.Precompiled(m.normalizer_spec.precompiled_charsmap))
  if m.normalizer_spec.remove_extra_whitespaces:
    norm += [normalizers.Replace(tokenizers.Regex(" {2,}"), " "),
             normalizers.Replace(tokenizers.Regex("^ | $"), "")]
  if m.normalizer_spec.add_dummy_prefix:
    norm.append(normalizers.Prepend("▁"))
  tok.normalizer = normalizers.Sequence(norm + [normalizers.Replace(" ", "▁")])
  user = [p.piece for p in m.pieces if p.type == _USER]
  split = [pre_tokenizers.Split(tokenizers.Regex(_chars_of(user)), "isolated")]
  tok.pre_tokenizer = pre_tokenizers.Sequence(
      (split if user else []) + [pre_tokenizers.Metaspace("▁", prepend_scheme="never")])
  tok.decoder = decoders.Metaspace("▁", prepend_scheme="always" if
                                   m.normalizer_spec.add_dummy_prefix else "never")
  ids = dict(pad=m.trainer_spec.pad_id, unk=m.trainer_spec.unk_id, bos=m.trainer_spec.bos_id,
             eos=m.trainer_spec.eos_id)
  config = {f"{r}_token": pieces[i] for r, i in ids.items() if 0 <= i < len(pieces)}
  return tok, config


def write(out_dir: str, main: bytes, config_bytes: bytes | None = None) -> list[str]:
  """Writes the tokenizer files of the run's tokenizer (``main``: its tokenizer.json or
  sentencepiece model bytes; ``config_bytes``: its tokenizer_config.json, if any) into
  ``out_dir``; returns one report line per file."""
  os.makedirs(out_dir, exist_ok=True)
  config = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False,
            "add_eos_token": False, "clean_up_tokenization_spaces": False}
  if is_json(main):
    with open(os.path.join(out_dir, JSON_FILE), "wb") as f:
      f.write(main)
    theirs = json.loads(config_bytes or b"{}")
    roles = theirs.get(hf_tokenizer.SPECIALS_KEY, {})  # the run's resolved roles
    config |= {k: v for k, v in theirs.items() if k != hf_tokenizer.SPECIALS_KEY}
    config |= {f"{r}_token": roles[r] for r in _ROLES if roles.get(r)}
    written = [JSON_FILE]
  else:
    tok, roles = from_sentencepiece(main)
    tok.save(os.path.join(out_dir, JSON_FILE))
    with open(os.path.join(out_dir, SPM_FILE), "wb") as f:
      f.write(main)
    config |= roles
    written = [JSON_FILE, SPM_FILE]
  config.pop("auto_map", None)  # nothing but transformers' own classes
  # The run never reads a special token out of user text (a typed <|vision_start|> is plain
  # text: data/hf_tokenizer.py), so neither may the export, whatever the source's config said
  # (Qwen2.5's says false).
  config["split_special_tokens"] = True
  with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
    json.dump(config, f, indent=1, sort_keys=True)
  return [f"tokenizer file {n}" for n in written + [CONFIG_FILE]]
