"""The run card: ``<workdir>/run_card.json``, enough to rerun a run exactly and to know what ran.

``write_run_card(config, workdir, mesh)`` at start-up (the loop calls it once the mesh and the
tokenizer exist) records the resolved config, the git commit and dirty flag (the diff against
HEAD, untracked files included, goes to ``git_diff.patch``), package versions, the JAX devices
and mesh, the seeds and the random streams derived from them, the data source fingerprint and
the start time. ``finish_run_card(workdir)`` (the loop's ``finally``) adds the end time, the
status and the last logged step. A resumed run appends a session (start, end, commit, its own
``git_diff.<n>.patch``, and the config keys that changed) and keeps the first start time. Only
process 0 writes.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import pathlib
import platform
import socket
import subprocess
import sys
from typing import Any

import jax

from mogao_jax.data import tokenizer as tokenizer_lib
from mogao_jax.train import checkpoint as ckpt_lib

CARD_FILE = "run_card.json"
DIFF_FILE = "git_diff.patch"
_REPO = pathlib.Path(__file__).resolve().parents[2]
_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy",
             "ml-collections", "sentencepiece", "tensorboardX", "absl-py", "pillow", "scipy",
             "tensorflow-datasets", "mogao_jax")
_ENV_PREFIXES = ("XLA_", "JAX_", "TF_CPP_", "MOGAO_", "CUDA_VISIBLE_DEVICES", "TPU_")
_MAX_UNTRACKED_BYTES = 1 << 20  # untracked files bigger than this are listed, not diffed


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def _primary() -> bool:
  return jax.process_index() == 0


# --- git ----------------------------------------------------------------------------------------

def _git(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(["git", *args], cwd=_REPO, capture_output=True, timeout=60)


def git_info(diff_path: str | None = None) -> dict[str, Any]:
  """Commit, branch, dirty flag and untracked files of the source tree; the full diff against
  HEAD (untracked files as additions) goes to ``diff_path``."""
  try:
    head = _git("rev-parse", "HEAD")
  except (OSError, subprocess.SubprocessError) as e:
    return {"commit": None, "error": f"git not runnable: {e}"}
  if head.returncode:
    return {"commit": None, "error": head.stderr.decode(errors="replace").strip()}
  status = _git("status", "--porcelain").stdout.decode(errors="replace")
  untracked = _git("ls-files", "--others", "--exclude-standard", "-z").stdout.decode(
      errors="replace").split("\0")
  untracked = [u for u in untracked if u]
  info = {"commit": head.stdout.decode().strip(), "dirty": bool(status.strip()),
          "branch": _git("rev-parse", "--abbrev-ref", "HEAD").stdout.decode().strip(),
          "changed_files": [line[3:] for line in status.splitlines()],
          "repo": str(_REPO)}
  if diff_path and info["dirty"]:
    diff = _git("diff", "HEAD", "--binary").stdout
    for path in untracked:  # exit status 1 = "they differ", as wanted
      if (_REPO / path).is_file() and (_REPO / path).stat().st_size <= _MAX_UNTRACKED_BYTES:
        diff += _git("diff", "--no-index", "--binary", "--", "/dev/null", path).stdout
    with open(diff_path, "wb") as f:
      f.write(diff)
    info["diff_file"] = os.path.basename(diff_path)
    info["diff_sha256"] = _sha256(diff)
  return info


# --- environment --------------------------------------------------------------------------------

def package_versions() -> dict[str, str | None]:
  out: dict[str, str | None] = {}
  for name in _PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def device_info(mesh=None) -> dict[str, Any]:
  devices = jax.devices()
  info = {"backend": jax.default_backend(), "process_count": jax.process_count(),
          "device_count": len(devices), "local_device_count": jax.local_device_count(),
          "device_kinds": sorted({d.device_kind for d in devices}),
          "devices": [{"id": d.id, "kind": d.device_kind, "process": d.process_index}
                      for d in devices]}
  if mesh is not None:
    info["mesh"] = {"axis_names": list(mesh.axis_names),
                    "shape": {k: int(v) for k, v in mesh.shape.items()},
                    "device_ids": mesh.device_ids.tolist()}
  return info


def seed_streams(config) -> dict[str, Any]:
  """config.seed and the documented streams derived from it (WORKSPACE.md, Determinism)."""
  seed = int(config.seed)
  return {
      "seed": seed,
      "eval_seed": config.data.get("eval_seed"),
      "param_init": f"split(key({seed}))[0] -> model.init",
      "train_noise": f"fold_in(split(key({seed}))[1], step) -> split -> (t, noise)",
      "data_order": f"grain shuffle(seed={seed} + 7919 * split), split train=0 eval=1",
      "documents": f"world.make_document(seed=[{seed}, split], index)",
      "tokenizer": "world_text_corpus(2000 scenes): independent of the seed",
  }


def data_fingerprint(config, workdir: str) -> dict[str, Any]:
  """Hashes of what determines the data: the data config (the world's parameters), the world
  generator's source code, and the tokenizer model of the workdir (if already there)."""
  params = ckpt_lib.config_to_json(config)["data"]
  world_dir = _REPO / "mogao_jax" / "data" / "sources" / "world"
  code = b"".join(p.name.encode() + p.read_bytes() for p in sorted(world_dir.glob("*.py")))
  out = {"source": config.data.source,
         "params_sha256": _sha256(json.dumps(params, sort_keys=True).encode()),
         "world_code_sha256": _sha256(code), "seed": int(config.seed)}
  tok = tokenizer_lib.workdir_files(workdir)
  if tok:
    out["tokenizer_sha256"] = _sha256(b"".join(tok[k] for k in sorted(tok)))
  parts = [out["params_sha256"], out["world_code_sha256"], str(out["seed"]),
           out.get("tokenizer_sha256", "")]
  out["fingerprint"] = _sha256("|".join(parts).encode())[:16]
  return out


# --- the card -----------------------------------------------------------------------------------

def read_run_card(workdir: str) -> dict[str, Any] | None:
  path = os.path.join(workdir, CARD_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _write(workdir: str, card: dict[str, Any]) -> None:
  path = os.path.join(workdir, CARD_FILE)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(card, f, indent=2, sort_keys=True, default=str)
  os.replace(tmp, path)


def _changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
  keys = []
  for k in sorted(set(old) | set(new)):
    a, b = old.get(k), new.get(k)
    if isinstance(a, dict) and isinstance(b, dict):
      keys += _changed_keys(a, b, f"{prefix}{k}.")
    elif a != b:
      keys.append(f"{prefix}{k}")
  return keys


def build_run_card(config, workdir: str, mesh=None, diff_file: str = DIFF_FILE
                   ) -> dict[str, Any]:
  """The card of this session (no card written; the diff is, if the tree is dirty)."""
  start = _now()
  git = git_info(os.path.join(workdir, diff_file))
  return {
      "format": 1, "workdir": os.path.abspath(workdir), "start_time": start,
      "end_time": None, "status": "running", "command": list(sys.argv),
      "host": socket.gethostname(), "python": sys.version.split()[0],
      "platform": platform.platform(), "config": ckpt_lib.config_to_json(config),
      "git": git, "packages": package_versions(), "jax": device_info(mesh),
      "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(_ENV_PREFIXES)},
      "seeds": seed_streams(config), "data": data_fingerprint(config, workdir),
      "sessions": [{"start_time": start, "end_time": None, "status": "running",
                    "commit": git.get("commit"), "dirty": git.get("dirty"),
                    "diff_file": git.get("diff_file")}],
  }


def write_run_card(config, workdir: str, mesh=None, config_changes: list[str] = ()
                   ) -> dict[str, Any] | None:
  """Writes ``workdir/run_card.json`` (process 0); on a resume keeps the first start time and
  appends this session. ``config_changes``: the run keys this resume changed against its
  checkpoint ('key: old -> new', allowed by train.allow_config_change), recorded in the session.
  Returns the card (None on other processes)."""
  if not _primary():
    return None
  os.makedirs(workdir, exist_ok=True)
  old = read_run_card(workdir)
  n = len(old.get("sessions", [])) if old else 0  # a resume keeps the earlier sessions' diffs
  card = build_run_card(config, workdir, mesh, DIFF_FILE if not n else f"git_diff.{n + 1}.patch")
  if old:
    session = card["sessions"][0]
    session["config_changed"] = _changed_keys(old.get("config", {}), card["config"])
    card["sessions"] = old.get("sessions", []) + [session]
    card["start_time"] = old.get("start_time", card["start_time"])
  if config_changes:
    card["sessions"][-1]["config_changes_allowed"] = list(config_changes)
  _write(workdir, card)
  return card


def _last_step(workdir: str) -> int | None:
  path, last = os.path.join(workdir, "metrics.jsonl"), None
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          last = json.loads(line).get("step", last)
        except json.JSONDecodeError:  # a line cut by a kill
          pass
  return last


def _status() -> str:
  """From the exception in flight, if any (finish_run_card runs in the loop's ``finally``)."""
  exc = sys.exc_info()[1]
  if exc is None:
    return "finished"
  if isinstance(exc, KeyboardInterrupt):
    return "interrupted"
  return f"failed: {type(exc).__name__}: {exc}"[:500]


def finish_run_card(workdir: str, status: str | None = None) -> dict[str, Any] | None:
  """Stamps the end time, the status (default: from the exception in flight) and the last
  logged step onto the card of ``write_run_card``. A no-op without a card or off process 0."""
  if not _primary():
    return None
  card = read_run_card(workdir)
  if card is None:
    return None
  end, status = _now(), status or _status()
  last = _last_step(workdir)
  card.update(end_time=end, status=status, last_step=last)
  steps = card.get("config", {}).get("train", {}).get("steps")
  card["completed"] = bool(last is not None and steps is not None and last >= steps)
  if card.get("sessions"):
    card["sessions"][-1].update(end_time=end, status=status, last_step=last)
  _write(workdir, card)
  return card
