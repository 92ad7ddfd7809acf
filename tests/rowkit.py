"""Hand-built packed rows for model tests, independent of the data pipeline's packer.

A document is a list of entities, in order:
  ("txt", [token ids])                         text tokens, one T step each
  ("img", image_id, grid, copies, pixels_NP)   one image, one T step; copies is a subset of
                                               "VCN" (VIT, CVAE, NVAE); pixels [grid*grid, P]
"""

import numpy as np

from mogao_jax.data.batch import Kind, empty_row


def build_row(docs, l_txt, l_vis, patch_dim, latent_dim):
  row = empty_row(l_txt, l_vis, patch_dim, latent_dim)
  it = iv = 0
  for seg, doc in enumerate(docs, start=1):
    t = 0
    txt_slots = []  # slots of this document's TXT tokens, in order
    for ent in doc:
      if ent[0] == "txt":
        for tok in ent[1]:
          _meta(row, "txt", it, seg, Kind.TXT, 0, (t, 0, 0))
          row["txt_token"][it] = tok
          txt_slots.append(it)
          it += 1
          t += 1
        continue
      _, image_id, grid, copies, pixels = ent
      for n in range(grid * grid):
        pos = (t, n // grid, n % grid)
        if "V" in copies:
          _meta(row, "txt", it, seg, Kind.VIT, image_id, pos)
          row["txt_patch"][it] = pixels[n]
          it += 1
        for code, kind in (("C", Kind.CVAE), ("N", Kind.NVAE)):
          if code in copies:
            _meta(row, "vis", iv, seg, kind, image_id, pos)
            row["vis_latent"][iv] = pixels[n]
            row["vis_loss_w"][iv] = float(kind == Kind.NVAE)
            iv += 1
      t += 1
    for a, b in zip(txt_slots[:-1], txt_slots[1:]):
      row["txt_target"][a] = row["txt_token"][b]
      row["txt_loss_w"][a] = 1.0
  assert it <= l_txt and iv <= l_vis, (it, iv)
  return row


def _meta(row, stream, i, seg, kind, image, pos):
  row[f"{stream}_segment"][i] = seg
  row[f"{stream}_kind"][i] = kind
  row[f"{stream}_image"][i] = image
  row[f"{stream}_pos"][i] = pos


def stack(rows):
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _img(rng, i, grid, copies, dim=4):
  return ("img", i, grid, copies, rng.uniform(-1, 1, (grid * grid, dim)).astype(np.float32))


def mixed_rows(l_txt=48, l_vis=40):
  """Two packed rows for attention tests: row 0 holds two documents (context images, a
  generated one, a story image with all three copies), row 1 one document; both end in
  padding (4-wide patches and latents)."""
  rng = np.random.default_rng(0)
  row0 = [[("txt", [5, 6, 7]), _img(rng, 1, 2, "VC"), ("txt", [8, 9]), _img(rng, 2, 2, "VCN"),
           ("txt", [4]), _img(rng, 3, 2, "N")],
          [("txt", [5, 6, 7, 8, 9, 10]), _img(rng, 4, 3, "N")]]
  row1 = [[("txt", [5] * 9), _img(rng, 1, 3, "VCN"), ("txt", [3, 3])]]
  return stack([build_row(d, l_txt, l_vis, 4, 4) for d in (row0, row1)])


def images_only_rows(l_txt=16, l_vis=40):
  """One row of two documents that are images only (no text token): a 3 x 3 image with all
  three copies, then a 4 x 4 generated image; vision padding after them."""
  rng = np.random.default_rng(4)
  docs = [[_img(rng, 1, 3, "VCN")], [_img(rng, 1, 4, "N")]]
  return stack([build_row(docs, l_txt, l_vis, 4, 4)])
