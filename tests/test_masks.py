"""Every cell of MOGAO.md section 4's visibility table, on a hand-built row."""

import numpy as np
import pytest

from mogao_jax.data.batch import Kind
from mogao_jax.model import masks
from tests import rowkit

OTHER, SAME = "1100,1100,1110,1110", "0000,0100,0110,0001"
P = 3


def _row():
  px = np.zeros((4, P), np.float32)
  doc1 = [("txt", [5]),                       # T0: a
          ("img", 1, 2, "VCN", px),           # T1: image A, generated and then context
          ("txt", [6]),                       # T2: b
          ("img", 2, 2, "VC", px),            # T3: image B, context only
          ("img", 3, 2, "N", px),             # T4: image C, generated, last
          ("txt", [7])]                       # T5: d
  doc2 = [("txt", [8, 9])]
  return rowkit.build_row([doc1, doc2], l_txt=24, l_vis=24, patch_dim=P, latent_dim=P)


@pytest.fixture(scope="module")
def vis():
  row = rowkit.stack([_row()])
  meta = masks.joint_metadata(row)
  v = masks.visibility(meta, meta, masks.parse_table(OTHER), masks.parse_table(SAME))
  return np.asarray(v[0]), {k: np.asarray(x[0]) for k, x in meta.items()}


def _slots(meta, seg, kind, image=None, t=None):
  sel = (meta["segment"] == seg) & (meta["kind"] == kind)
  if image is not None:
    sel &= meta["image"] == image
  if t is not None:
    sel &= meta["pos"][:, 0] == t
  idx = np.nonzero(sel)[0]
  assert idx.size, (seg, kind, image, t)
  return idx


def _sees(v, q, k):
  block = v[np.ix_(q, k)]
  assert block.all() or not block.any(), "a block of one entity pair must be uniform"
  return bool(block.all())


def test_table_cells(vis):
  v, m = vis
  txt = lambda t, seg=1: _slots(m, seg, Kind.TXT, t=t)
  vit = lambda i: _slots(m, 1, Kind.VIT, i)
  cvae = lambda i: _slots(m, 1, Kind.CVAE, i)
  nvae = lambda i: _slots(m, 1, Kind.NVAE, i)
  cases = {
      # TXT query: earlier TXT, VIT yes; CVAE, NVAE no
      ("TXT b", "TXT a"): (txt(2), txt(0), True),
      ("TXT b", "VIT A"): (txt(2), vit(1), True),
      ("TXT b", "CVAE A"): (txt(2), cvae(1), False),
      ("TXT b", "NVAE A"): (txt(2), nvae(1), False),
      ("TXT d", "VIT B"): (txt(5), vit(2), True),
      ("TXT d", "CVAE B"): (txt(5), cvae(2), False),
      ("TXT d", "NVAE C"): (txt(5), nvae(3), False),
      # VIT query
      ("VIT B", "TXT b"): (vit(2), txt(2), True),
      ("VIT B", "VIT A"): (vit(2), vit(1), True),
      ("VIT B", "CVAE A"): (vit(2), cvae(1), False),
      ("VIT B", "NVAE A"): (vit(2), nvae(1), False),
      ("VIT B", "same VIT B"): (vit(2), vit(2), True),
      ("VIT B", "same CVAE B"): (vit(2), cvae(2), False),
      ("VIT A", "same NVAE A"): (vit(1), nvae(1), False),
      # CVAE query
      ("CVAE B", "TXT b"): (cvae(2), txt(2), True),
      ("CVAE B", "VIT A"): (cvae(2), vit(1), True),
      ("CVAE B", "CVAE A"): (cvae(2), cvae(1), True),
      ("CVAE B", "NVAE A"): (cvae(2), nvae(1), False),
      ("CVAE B", "same VIT B"): (cvae(2), vit(2), True),
      ("CVAE B", "same CVAE B"): (cvae(2), cvae(2), True),
      ("CVAE A", "same NVAE A"): (cvae(1), nvae(1), False),
      # NVAE query
      ("NVAE C", "TXT b"): (nvae(3), txt(2), True),
      ("NVAE C", "VIT B"): (nvae(3), vit(2), True),
      ("NVAE C", "CVAE B"): (nvae(3), cvae(2), True),
      ("NVAE C", "NVAE A"): (nvae(3), nvae(1), False),
      ("NVAE A", "same VIT A"): (nvae(1), vit(1), False),
      ("NVAE A", "same CVAE A"): (nvae(1), cvae(1), False),
      ("NVAE A", "own NVAE A"): (nvae(1), nvae(1), True),
      # causality: nothing reads a later entity
      ("TXT a", "TXT b"): (txt(0), txt(2), False),
      ("VIT A", "TXT b"): (vit(1), txt(2), False),
      ("NVAE A", "TXT b"): (nvae(1), txt(2), False),
      ("CVAE A", "CVAE B"): (cvae(1), cvae(2), False),
      ("TXT b", "TXT b"): (txt(2), txt(2), True),
  }
  wrong = [name for name, (q, k, want) in cases.items() if _sees(v, q, k) != want]
  assert not wrong, f"cells that break the table: {wrong}"


def test_segments_and_padding(vis):
  v, m = vis
  seg = m["segment"]
  d1, d2, pad = seg == 1, seg == 2, seg == 0
  assert d2.sum() == 2 and pad.sum() > 0
  assert not v[np.ix_(d1, d2)].any() and not v[np.ix_(d2, d1)].any()
  assert not v[:, pad].any(), "no slot may read padding"
  assert not v[pad].any(), "padding queries read nothing (attention falls back to uniform)"
  q2 = np.nonzero(d2)[0]
  assert v[q2[1], q2[0]] and not v[q2[0], q2[1]]  # causal inside the second document


def test_bagel_variant_is_one_edit():
  bagel = masks.parse_table("1110,1100,1110,1110")
  assert bagel[Kind.TXT, Kind.CVAE] and not masks.parse_table(OTHER)[Kind.TXT, Kind.CVAE]


@pytest.mark.parametrize("spec", ["1100,1100,1110", "1100,1100,1110,11x0", "11,1100,1110,1110"])
def test_bad_table_names_key(spec):
  with pytest.raises(ValueError, match="model.mask_other"):
    masks.parse_table(spec, "model.mask_other")
