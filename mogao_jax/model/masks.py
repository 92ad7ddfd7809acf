"""The visibility rule table and the attention mask built from per-slot metadata.

For a query slot q and a key slot k of the same packed document (segment > 0):

* same image (q.image == k.image != 0): visible iff SAME[q.kind, k.kind];
* otherwise: visible iff k.T <= q.T and OTHER[q.kind, k.kind].

Every text token and every image takes its own T step within a document, so "k.T <= q.T"
is causal order between entities, and two copies of one image (VIT, CVAE, NVAE) share a T and
an image id. The tables are config strings (model.mask_other / model.mask_same), rows = query
kind, columns = key kind, both in the order TXT, VIT, CVAE, NVAE (MOGAO.md section 4).

The mask is never stored in the data pipeline; the model builds it here from the metadata.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from mogao_jax.data.batch import NUM_KINDS, Kind

_ORDER = (Kind.TXT, Kind.VIT, Kind.CVAE, Kind.NVAE)


def parse_table(spec: str, key: str = "model.mask_other") -> np.ndarray:
  """'1100,1100,1110,1110' -> bool [NUM_KINDS, NUM_KINDS] indexed by Kind (PAD row/col False)."""
  rows = [r.strip() for r in spec.split(",")]
  if len(rows) != 4 or any(len(r) != 4 or set(r) - {"0", "1"} for r in rows):
    raise ValueError(f"{key} must be 4 comma-separated rows of four 0/1 digits "
                     f"(query kinds TXT,VIT,CVAE,NVAE x key kinds), got {spec!r}")
  table = np.zeros((NUM_KINDS, NUM_KINDS), bool)
  for qi, q in enumerate(_ORDER):
    for ki, k in enumerate(_ORDER):
      table[q, k] = rows[qi][ki] == "1"
  return table


def visibility(q_meta: dict, k_meta: dict, other: np.ndarray, same: np.ndarray) -> jnp.ndarray:
  """bool [B, Lq, Lk]: may query slot i read key slot j.

  q_meta / k_meta hold 'segment', 'kind', 'image' [B, L] and 'pos' [B, L, 3].
  """
  qs, ks = q_meta["segment"][:, :, None], k_meta["segment"][:, None, :]
  qi, ki = q_meta["image"][:, :, None], k_meta["image"][:, None, :]
  qt, kt = q_meta["pos"][:, :, None, 0], k_meta["pos"][:, None, :, 0]
  qk, kk = q_meta["kind"][:, :, None], k_meta["kind"][:, None, :]
  same_doc = (qs == ks) & (qs > 0)
  same_image = (qi == ki) & (qi > 0)
  rule_same = jnp.asarray(same)[qk, kk]
  rule_other = jnp.asarray(other)[qk, kk]
  return same_doc & jnp.where(same_image, rule_same, (kt <= qt) & rule_other)


def joint_metadata(batch: dict) -> dict:
  """Metadata of the joint sequence [text stream ; vision stream] that attention runs over."""
  return {f: jnp.concatenate([batch[f"txt_{f}"], batch[f"vis_{f}"]], axis=1)
          for f in ("segment", "kind", "image", "pos")}
