"""Every config key's type and valid range, declared once; checked before any compile or data read.

``validate(config)`` runs first in ``train()`` (and so before a dry run, the mesh, the data or any
compile). It fails on a key that is missing, undeclared (a typo in a Python-built config), of the
wrong type, non-finite, or out of range, naming the full key (``data.l_vis = 0: must be an int
>= 1``). Rules between keys that need nothing but the config (``optim.warmup_steps <
train.steps``, ``dist.process_id < dist.num_processes``, image size vs ``model.vit_grid``) are
``cross_problems``, run by ``validate``; those that need files or libraries (batch
divisibility, mesh sizes, data specs, a VAE's config.json) stay beside their code and run right
after this, still before any work, as the same one-line ``ConfigError``.

A new key goes here or the trainer refuses it (``tests/test_config_schema.py`` also sets every
numeric key of every experiment config out of its range and expects the error to name it).
Free-form sections (``mesh.shape``, ``data.doc_weights``) declare their values' type and range.
JAX-free, like the configs it checks.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import ml_collections

_SEED_MAX = 2**31 - 1  # seeds feed numpy / Grain / jax.random, all fine with int32
# train.steps' bound: 1e8 is ~80x the longest published LLM pretraining (~1.2M steps), so no
# real run nears it, and 20x below where the int32 step counters (TrainState.step, optax's
# schedule count) overflow; a typo'd 1e12 is refused instead of "training" forever.
STEPS_MAX = 100_000_000


class ConfigError(ValueError):
  """Bad config values (the message names every bad key); the entry point prints it alone."""


@dataclasses.dataclass(frozen=True)
class Key:
  """One key: its type, range (``lo``/``hi`` inclusive unless ``*_open``) or choices."""
  kind: str  # int | float | bool | str | choice | weights | scales | int_pair | ints | strs | any
  lo: float | None = None
  hi: float | None = None
  lo_open: bool = False
  hi_open: bool = False
  choices: tuple = ()
  optional: bool = False  # may be absent (read with a default)
  nullable: bool = False  # None allowed (means "off")

  def problem(self, v: Any) -> str | None:
    """Why ``v`` is not a valid value, or None."""
    if v is None:
      return None if self.nullable else "must be set (not None)"
    check = getattr(self, f"_check_{self.kind}")
    return check(v)

  def _range(self, v) -> str | None:
    if isinstance(v, float) and not math.isfinite(v):
      return "must be finite"
    low = self.lo is None or (v > self.lo if self.lo_open else v >= self.lo)
    high = self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)
    return None if low and high else f"must be in {self.range_text()}"

  def range_text(self) -> str:
    lo = "-inf" if self.lo is None else self.lo
    hi = "inf" if self.hi is None else self.hi
    return f"{'(' if self.lo_open or self.lo is None else '['}{lo}, {hi}" \
           f"{')' if self.hi_open or self.hi is None else ']'}"

  def _check_int(self, v) -> str | None:
    if not isinstance(v, int) or isinstance(v, bool):
      return "must be an int"
    return self._range(v)

  def _check_float(self, v) -> str | None:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
      return "must be a number"
    return self._range(float(v))

  def _check_bool(self, v) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"

  def _check_str(self, v) -> str | None:
    return None if isinstance(v, str) else "must be a string"

  def _check_choice(self, v) -> str | None:
    return None if v in self.choices else f"must be one of {list(self.choices)}"

  def _check_weights(self, v) -> str | None:
    """name -> weight >= 0, a free-form section (``entry_problems`` checks each entry)."""
    items = dict(v.items()) if hasattr(v, "items") else None
    if not items:
      return "must map names to weights (at least one)"
    if any(_WEIGHT.problem(w) for w in items.values()):
      return None  # named per entry
    return None if sum(items.values()) > 0 else "needs at least one weight > 0"

  def _check_scales(self, v) -> str | None:
    """name -> multiplier >= 0, possibly empty and all 0 (``entry_problems`` checks each)."""
    return None if hasattr(v, "items") else "must map names to numbers >= 0"

  def entry_problems(self, key: str, v) -> list[str]:
    """A weights section's bad entries, each named by its full key (data.doc_weights.t2i)."""
    if self.kind not in ("weights", "scales") or not hasattr(v, "items"):
      return []
    return [f"{key}.{name} = {w!r}: {_WEIGHT.problem(w)}" for name, w in v.items()
            if _WEIGHT.problem(w)]

  def _check_int_pair(self, v) -> str | None:
    if (not isinstance(v, (tuple, list)) or len(v) != 2
        or any(Key("int", lo=self.lo).problem(x) for x in v) or v[0] > v[1]):
      return f"must be (min, max) ints with {self.lo} <= min <= max"
    return None

  def _check_ints(self, v) -> str | None:
    ok = isinstance(v, (tuple, list)) and not any(Key("int", lo=self.lo).problem(x) for x in v)
    return None if ok else f"must be a list of ints >= {self.lo}"

  def _check_strs(self, v) -> str | None:
    ok = isinstance(v, (tuple, list)) and all(isinstance(x, str) for x in v)
    return None if ok else "must be a list of strings"

  def _check_any(self, v) -> str | None:  # checked by the code that parses it (named there)
    return None


def _int(lo=None, hi=None, **kw) -> Key:
  return Key("int", lo=lo, hi=hi, **kw)


def _pos(**kw) -> Key:
  return _int(lo=1, **kw)


def _float(lo=None, hi=None, **kw) -> Key:
  return Key("float", lo=lo, hi=hi, **kw)


def _choice(*choices, **kw) -> Key:
  return Key("choice", choices=choices, **kw)


_STR, _BOOL = Key("str"), Key("bool")
_WEIGHT = _float(0.0)
_PROB = _float(0.0, 1.0)
_POSITIVE = _float(0.0, lo_open=True)

SCHEMA: dict[str, Key] = {
    "seed": _int(0, _SEED_MAX),
    "dry_run": _BOOL,
    "dry_run_topology": _STR,
    # --- data
    "data.source": _STR,
    "data.sources": Key("any", optional=True),  # data/sources/specs.py parses and names it
    "data.image_size": _pos(),
    "data.patch_size": _pos(),
    "data.doc_weights": Key("weights"),
    "data.t2i_weights": Key("weights"),
    "data.story_steps": Key("int_pair", lo=1),
    "data.cond_dropout": _PROB,
    # text role (data/documents.py TEXT_ROLES) -> multiplier of its next-token loss weight
    # (absent role = 1; data/encoding.py role_weights names an unknown role)
    "data.text_loss_weights": Key("scales", optional=True),
    "data.eval_seed": _int(0, _SEED_MAX, optional=True),
    "data.vocab_size": _int(6),  # the tokenizer's 6 special symbols (pad unk bos eos <img> </img>)
    "data.tokenizer": Key("str", optional=True),  # sentencepiece file | tokenizer.json | dir
    # HF roles, e.g. "img_open=<|vision_start|>,eos=<|im_end|>" (data/hf_tokenizer.py)
    "data.tokenizer_specials": Key("str", optional=True),
    # the tokenizer is not the imported LM's (init.text): its embedding is learned anew
    "data.tokenizer_relearn": Key("bool", optional=True),
    "data.latents": _choice("pixels", "precomputed", "encode"),
    "data.vae": Key("str", optional=True),  # a diffusers AutoencoderKL dir (data/latents.py)
    "data.latent_patch": _pos(),
    "data.latent_channels": _pos(),
    "data.l_txt": _pos(),
    "data.l_vis": _pos(),
    "data.batch_size": _pos(),
    "data.shuffle_buffer": _int(0),
    "data.num_workers": _int(0, optional=True),
    "data.read_threads": _pos(optional=True),
    "data.pack_open_rows": _pos(),
    # data shards (data/shards.py): 0 = gcd(batch_size, 16); a multiple of the process count
    "data.num_shards": _int(0, optional=True),
    # --- model (model/config.py adds the rules between keys)
    "model.vocab_size": _pos(),
    "model.width": _pos(),
    "model.depth": _pos(),
    "model.num_heads": _pos(),
    "model.num_kv_heads": _pos(),
    "model.head_dim": _pos(),
    "model.mlp_dim": _pos(),
    "model.qkv_bias": _BOOL,
    "model.qk_norm": _BOOL,
    "model.rope_theta": _POSITIVE,
    "model.tie_embeddings": _BOOL,
    "model.norm_eps": _POSITIVE,
    "model.latent_dim": _pos(),
    "model.patch_dim": _pos(),
    "model.vit_width": _pos(),
    "model.vit_depth": _pos(),
    "model.vit_heads": _pos(),
    "model.vit_grid": _pos(),
    "model.vis_pos_embed": _choice("sincos", "none", optional=True),
    "model.predict": _choice("velocity", "x1", optional=True),
    "model.edit_skip": Key("bool", optional=True),  # model/edit_skip.py; off = the paper
    "model.vit": _choice("tiny", "siglip", optional=True),
    "model.vit_mlp_dim": _int(0, optional=True),
    "model.vit_pos_grid": _int(0, optional=True),
    "model.vit_norm_eps": _float(0.0, lo_open=True, optional=True),
    "model.vit_images": _int(0, optional=True),
    "model.vis_images": _int(0, optional=True),
    "model.vis_grid": _int(0, optional=True),
    "model.mask_other": _STR,  # model/masks.py parses the table and names the key
    "model.mask_same": _STR,
    "model.scan_layers": _BOOL,
    "model.remat": _choice("none", "full", "dots"),
    "model.attention": _choice("dense", "blockwise", "flash", optional=True),
    "model.attention_block": _pos(optional=True),
    "model.dtype": _choice("float32", "bfloat16", "float16"),
    "model.vision_init": _choice("copy_text", "scratch"),
    # --- pretrained parts
    "init.text": _STR,
    "init.vit": _STR,
    "init.params_from": _STR,
    "init.params_key": _choice("params", "ema"),
    # --- flow matching
    "flow.logit_mean": _float(),
    "flow.logit_std": _POSITIVE,
    "flow.shift": _POSITIVE,
    "loss.text_weight": _float(0.0),
    "loss.image_weight": _float(0.0),
    # --- optimizer
    "optim.lr": _POSITIVE,
    "optim.warmup_steps": _int(0),  # and < train.steps (cross_problems)
    "optim.min_lr_ratio": _PROB,
    "optim.weight_decay": _float(0.0),
    "optim.b1": _float(0.0, 1.0, hi_open=True),
    "optim.b2": _float(0.0, 1.0, hi_open=True),
    "optim.clip_norm": _float(0.0, optional=True, nullable=True),  # 0 / None = no clipping
    "optim.eps": _float(0.0, lo_open=True, optional=True),
    # part (train/optimizer.py PARTS) -> lr multiplier, 0 = frozen; the parts named there
    "optim.lr_scale": Key("weights", optional=True),
    # --- the loop
    "train.steps": _int(1, STEPS_MAX),
    "train.log_every": _pos(),
    "train.ckpt_every": _pos(),
    "train.keep_checkpoints": _int(0),
    "train.keep_every": _int(0),
    "train.async_checkpointing": Key("bool", optional=True),
    "train.ema_decay": _float(0.0, 1.0, hi_open=True, optional=True),
    "train.sample_every": _int(0, optional=True),
    "train.sample_n": _pos(optional=True),
    "train.sample_steps": _pos(optional=True),
    "train.eval_every": _int(0, optional=True),
    "train.eval_n": _pos(optional=True),
    "train.eval_kinds": Key("strs", optional=True),
    "train.max_nan_skips": _int(0, optional=True),
    "train.debug_nan_steps": Key("ints", lo=1, optional=True),
    "train.grad_accum_steps": _pos(optional=True),
    "train.offload_opt_state": Key("bool", optional=True),
    "train.allow_config_change": Key("bool", optional=True),  # resume with changed run keys
    # --- parallelism (parallel/mesh.py and rules.py check the structure, naming the key)
    "mesh.shape": Key("any"),
    "mesh.rules": Key("any"),
    "mesh.axis_types": _choice("auto", "explicit", optional=True),
    "mesh.max_replicated_fraction": _float(0.0, 1.0, optional=True),
    # GiB per device for the start-up memory check (parallel/estimate.py check_fits): 0 = the
    # device's own (memory_stats, else the data sheet; unknown on CPU: no check), -1 = no check
    "mesh.device_memory_gib": _float(-1.0, optional=True),
    "dist.auto": Key("bool", optional=True),
    "dist.coordinator_address": Key("str", optional=True),
    "dist.num_processes": _pos(optional=True),
    "dist.process_id": _int(0, optional=True),
}

def leaves(config, prefix: str = "") -> dict[str, Any]:
  """Full key -> value; a declared key's value is one leaf even when it is a dict."""
  out = {}
  for name, v in config.items():
    key = prefix + name
    if isinstance(v, ml_collections.ConfigDict) and key not in SCHEMA:
      out.update(leaves(v, key + "."))
    else:
      out[key] = v
  return out


def problems(config, prefix: str = "", partial: bool = False) -> list[str]:
  """Every bad key of ``config`` as 'key = value: why'. ``prefix``: ``config`` is that section
  (e.g. "model."). ``partial``: check only the declared keys present (a saved config of an
  older version: unknown and missing keys are the reader's business)."""
  found = leaves(config, prefix)
  out = [] if partial else [f"{k}: unknown config key (not declared in"
                            " mogao_jax/config_schema.py)" for k in found if k not in SCHEMA]
  for key, spec in SCHEMA.items():
    if not key.startswith(prefix):
      continue
    if key not in found:
      if not (spec.optional or partial):
        out.append(f"{key}: missing from the config")
      continue
    why = spec.problem(found[key])
    if why:
      out.append(f"{key} = {found[key]!r}: {why}")
    out.extend(spec.entry_problems(key, found[key]))
  return out


def _get(config, key: str, default=None):
  section, _, name = key.partition(".")
  return config[section].get(name, default) if section in config else default


def cross_problems(config) -> list[str]:
  """The rules between keys that need no file or library (each names its keys); run by
  validate once every key is of the right type. Rules that read files (data.source specs,
  data.vae's config.json) run in train/loop.py's validate, also before any data or compile."""
  out = []
  steps, warmup = _get(config, "train.steps"), _get(config, "optim.warmup_steps")
  if steps is not None and warmup is not None and warmup >= steps:
    out.append(f"optim.warmup_steps = {warmup}: must be < train.steps = {steps}")
  n, pid = _get(config, "dist.num_processes", 1), _get(config, "dist.process_id", 0)
  if pid >= n:
    out.append(f"dist.process_id = {pid}: must be < dist.num_processes = {n}")
  out.extend(_vit_grid_problems(config))
  return out


def _vit_grid_problems(config) -> list[str]:
  """An image side has at most model.vit_grid patches (of data.patch_size pixels): the VIT's
  position table is vit_grid x vit_grid and model/vit.py's grid_index clips larger positions
  to its last row / column, so every patch past it would share one position."""
  grid, p = _get(config, "model.vit_grid"), _get(config, "data.patch_size")
  # Only the tiny ViT for now: the SigLIP scale configs (experiments/mogao_*.py) show 16 / 32
  # patches per side to a 14 / 27 grid, the same clipping; their fix changes their shapes.
  if grid is None or p is None or _get(config, "model.vit", "tiny") != "tiny":
    return []
  side = _get(config, "data.image_size")
  if side is None or side // p <= grid:
    return []
  return [f"model.vit_grid = {grid}: data.image_size = {side} px is {side // p} patches of "
          f"data.patch_size = {p} per side, more than the VIT position table's {grid}"]


def validate(config, prefix: str = "", partial: bool = False) -> None:
  """Raises ValueError naming every bad key (all at once, so one round of fixes is enough)."""
  bad = problems(config, prefix, partial)
  if not bad and not prefix and not partial:
    bad = cross_problems(config)
  if bad:
    if len(bad) == 1:  # the common case: one line, as the entry point prints it
      raise ConfigError(f"bad config value: {bad[0]}")
    raise ConfigError("bad config values:\n  " + "\n  ".join(bad))


def out_of_range(key: str) -> list[Any]:
  """Values just outside ``key``'s range (below, above, and inf for a float): what a test sets
  to see the error name the key. Empty for a non-numeric key."""
  spec = SCHEMA[key]
  if spec.kind not in ("int", "float"):
    return []
  step = 1 if spec.kind == "int" else 0.5
  out = []
  if spec.lo is not None:
    out.append(spec.lo if spec.lo_open else spec.lo - step)
  if spec.hi is not None:
    out.append(spec.hi if spec.hi_open else spec.hi + step)
  if spec.kind == "float":
    out.append(float("inf"))
  return out
