"""A Hugging Face `tokenizer.json` (e.g. Qwen2's byte-level BPE) behind the interface of
data/tokenizer.py: encode / decode, the ids the packer and the sampler need, the files a
checkpoint carries.

Special roles (config.data.tokenizer_specials overrides each; see `resolve_specials`):
  img_open / img_close   `<|vision_start|>` / `<|vision_end|>` (Qwen2's vision delimiters)
  eos, pad, bos          tokenizer_config.json's eos_token / pad_token / bos_token, else
                         `<|endoftext|>` (Qwen2 has no bos: a document then starts with eos,
                         its pretraining's document separator)

The run's copy is the pair `tokenizer.json` (the file as given, byte for byte) +
`tokenizer_config.json` (the source's, or an empty one, with the resolved roles under
`mogao_special_tokens`), so a workdir or a checkpoint alone rebuilds the same tokenizer.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
import tokenizers

JSON_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
ROLES = ("img_open", "img_close", "eos", "pad", "bos")
_DEFAULTS = {"img_open": "<|vision_start|>", "img_close": "<|vision_end|>"}
_FALLBACK = "<|endoftext|>"
SPECIALS_KEY = "mogao_special_tokens"
_OVERRIDE_KEY = "config.data.tokenizer_specials"


def _content(v) -> str | None:
  """tokenizer_config.json's token entry: a string, or an AddedToken dict ({"content": ..})."""
  if isinstance(v, dict):
    v = v.get("content")
  return v if isinstance(v, str) and v else None


def parse_overrides(spec: str) -> dict[str, str]:
  """`img_open=<|vision_start|>,eos=<|im_end|>` -> {role: token}; unknown roles are refused."""
  out = {}
  for item in filter(None, (s.strip() for s in (spec or "").split(","))):
    role, sep, token = item.partition("=")
    if not sep or role.strip() not in ROLES or not token.strip():
      raise ValueError(f"{_OVERRIDE_KEY}={spec!r}: {item!r} is not ROLE=TOKEN with ROLE one "
                       f"of {', '.join(ROLES)}")
    out[role.strip()] = token.strip()
  return out


def resolve_specials(hf_config: dict, overrides: dict[str, str]) -> dict[str, str]:
  """The token of each role: the override, else tokenizer_config.json (eos / pad / bos), else
  the Qwen2 default; bos falls back to eos (a document must start with one token)."""
  out = {}
  for role in ROLES:
    out[role] = (overrides.get(role) or _content(hf_config.get(f"{role}_token"))
                 or _DEFAULTS.get(role))
  out["eos"] = out["eos"] or _FALLBACK
  out["pad"] = out["pad"] or out["eos"]
  out["bos"] = out["bos"] or out["eos"]
  return out


class HFTokenizer:
  """Same interface as data/tokenizer.py's sentencepiece `Tokenizer`."""

  kind = "hf"

  def __init__(self, json_bytes: bytes, config_bytes: bytes, where: str = JSON_FILE):
    self.model_proto, self.config_bytes = json_bytes, config_bytes
    try:
      self._tok = tokenizers.Tokenizer.from_str(json_bytes.decode("utf-8"))
      d = json.loads(json_bytes)
    except Exception as e:  # pylint: disable=broad-except  (the library's errors are bare)
      raise ValueError(f"{where}: not a Hugging Face tokenizer.json ({e})") from e
    self.specials = json.loads(config_bytes)[SPECIALS_KEY]
    # User text is encoded by a copy without the added tokens: their strings in text then go
    # through the normal pipeline (byte-level BPE pieces) and can never become their ids.
    # `encode_special_tokens` alone would still match added tokens not flagged special
    # (Qwen2.5's `<tool_call>`), and splitting around them would change the pre-tokenization.
    self._added = {t["content"]: t["id"] for t in d.get("added_tokens", [])}
    plain = dict(d, added_tokens=[])
    self._plain = tokenizers.Tokenizer.from_str(json.dumps(plain))
    ids = {}
    for role in ROLES:
      token = self.specials[role]
      i = self._tok.token_to_id(token)
      if i is None:
        raise ValueError(f"{where} has no token {token!r} for the role {role}: name one that it "
                         f"has with {_OVERRIDE_KEY}='{role}=TOKEN'")
      ids[role] = i
    self.img_open_id, self.img_close_id = ids["img_open"], ids["img_close"]
    self.eos_id, self.pad_id, self.bos_id = ids["eos"], ids["pad"], ids["bos"]
    self.unk_id = -1
    vocab = self._tok.get_vocab(with_added_tokens=True)
    self._size = max(vocab.values()) + 1
    self._plain_ids = np.array(sorted(set(self._plain.get_vocab().values())
                                      - set(self._added.values())), np.int64)
    for token, i in self._added.items():  # the model's own vocab may hold an added string
      if set(self._plain.encode(token, add_special_tokens=False).ids) & set(self._added.values()):
        raise ValueError(f"{where}: the text {token!r} encodes to an added token's id even "
                         "without the added tokens; this tokenizer cannot keep user text apart "
                         "from its special tokens")

  @property
  def vocab_size(self) -> int:
    """One past the largest id (added tokens included): the embedding rows it needs."""
    return self._size

  @property
  def files(self) -> dict[str, bytes]:
    return {JSON_FILE: self.model_proto, CONFIG_FILE: self.config_bytes}

  def encode(self, text: str) -> list[int]:
    return list(self._plain.encode(text, add_special_tokens=False).ids)

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

  def special_literals(self, text: str) -> list[str]:
    """The added tokens' strings found in `text` (each encoded as plain text)."""
    return [t for t in self._added if t in text]

  def plain_ids(self) -> np.ndarray:
    """Ids that decode to text: the model's vocabulary without the added tokens."""
    return self._plain_ids


def read_files(path: str, overrides: dict[str, str], key: str) -> dict[str, bytes]:
  """`path` (a tokenizer.json, or a directory holding one) -> the run's two files."""
  f = os.path.join(path, JSON_FILE) if os.path.isdir(path) else path
  if not os.path.isfile(f):
    raise FileNotFoundError(f"{key}={path!r}: no {JSON_FILE} there")
  with open(f, "rb") as fh:
    json_bytes = fh.read()
  cfg_path = os.path.join(os.path.dirname(f), CONFIG_FILE)
  hf_config = {}
  if os.path.isfile(cfg_path):
    with open(cfg_path) as fh:
      try:
        hf_config = json.load(fh)
      except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path}: not JSON ({e})") from e
  hf_config = dict(hf_config, **{SPECIALS_KEY: resolve_specials(hf_config, overrides)})
  return {JSON_FILE: json_bytes,
          CONFIG_FILE: json.dumps(hf_config, indent=1, sort_keys=True).encode()}
