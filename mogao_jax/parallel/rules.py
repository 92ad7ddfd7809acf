"""Logical axis names -> mesh axes, from ``config.mesh.rules`` (ordered; first match wins).

Parameters and activations carry logical axis names (``batch``, ``embed``, ``heads``, ...); the
rule list maps each to a mesh axis, a tuple of mesh axes, or None (replicated). Names with no
rule are replicated. The model calls ``nn.with_logical_constraint`` on activations, which only
acts inside ``activate(mesh, rules)``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]


def _mesh_axes_of(target: Any) -> tuple[str, ...]:
  if target is None:
    return ()
  if isinstance(target, str):
    return (target,)
  return tuple(target)


def make_rules(config, mesh: Mesh | None = None) -> Rules:
  """Validated rules from ``config.mesh.rules``; with ``mesh``, every named axis must exist."""
  raw = config.mesh.rules
  rules = []
  for i, rule in enumerate(raw):
    try:
      logical, target = rule
    except (TypeError, ValueError) as e:
      raise ValueError(f"mesh.rules[{i}] = {rule!r}: expected (logical_name, mesh_axes)") from e
    if not isinstance(logical, str):
      raise ValueError(f"mesh.rules[{i}]: logical name {logical!r} is not a string")
    axes = _mesh_axes_of(target)
    if not all(isinstance(a, str) for a in axes):
      raise ValueError(f"mesh.rules[{i}] ({logical!r}): mesh axes {target!r} must be strings")
    if mesh is not None:
      unknown = [a for a in axes if a not in mesh.axis_names]
      if unknown:
        raise ValueError(
            f"mesh.rules[{i}] ({logical!r} -> {target!r}) names mesh axis {unknown[0]!r}, which"
            f" is not in mesh.shape (axes {tuple(mesh.axis_names)})")
    # Normalise lists (from JSON or the command line) to tuples: flax expects str | tuple.
    rules.append((logical, target if target is None or isinstance(target, str) else axes))
  return tuple(rules)


def logical_to_sharding(logical_spec_tree: Any, mesh: Mesh, rules: Rules) -> Any:
  """A tree of logical PartitionSpecs -> the same tree of NamedShardings on ``mesh``."""
  return nn.logical_to_mesh_sharding(logical_spec_tree, mesh, list(rules))


def batch_spec(rules: Rules, ndim: int = 1) -> PartitionSpec:
  """The mesh PartitionSpec of a [B, ...] array: B by the ``batch`` rule, the rest replicated."""
  logical = ("batch",) + (None,) * (ndim - 1)
  return nn.logical_to_mesh_axes(logical, list(rules))


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
  """The sharding of every [B, ...] batch array (trailing dims replicated, so rank-agnostic)."""
  return NamedSharding(mesh, batch_spec(rules))


def batch_size_divisor(mesh: Mesh, rules: Rules) -> int:
  """How many ways the batch dimension is split: the global batch must be a multiple."""
  axes = _mesh_axes_of(batch_spec(rules)[0])
  size = 1
  for a in axes:
    size *= mesh.shape[a]
  return size


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Rules) -> Iterator[None]:
  """Enter the mesh (``jax.set_mesh``) and the logical rules together, for jit and tracing."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(list(rules)):
    yield


def describe(tree_of_shardings: Any) -> Sequence[str]:
  """Human-readable 'path: spec' lines, for logging the parameter layout."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree_of_shardings)
  return [f"{jax.tree_util.keystr(p)}: {getattr(s, 'spec', s)}" for p, s in flat]
