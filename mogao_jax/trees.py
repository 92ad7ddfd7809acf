"""Nested mappings <-> flat dicts with joined keys: config diffs, tables and checkpoint
tensor names all need it. No JAX import (used at flag-parsing time)."""

from __future__ import annotations

from typing import Any


def flatten(tree: Any, sep: str = ".", _prefix: str = "") -> dict[str, Any]:
  """{"a": {"b": x}} -> {"a.b": x} (with sep "/": {"a/b": x}); walks anything with .items()
  (dict, ConfigDict, FrozenDict); an empty mapping contributes no keys."""
  if hasattr(tree, "items"):
    out: dict[str, Any] = {}
    for k, v in tree.items():
      out.update(flatten(v, sep, f"{_prefix}{k}{sep}"))
    return out
  return {_prefix[:-len(sep)]: tree}
