"""The Mogao model in plain PyTorch (imports torch only): packed batch in, text logits and flow
velocities out, numerically the JAX model of mogao_jax/model for float32.

    model = Mogao.from_dir("export_dir")             # model.safetensors + config.json
    logits_BTV, velocity_BVC = model(batch, vis_t_BV)

`batch` holds the packed-batch fields of mogao_jax/data/batch.py as torch tensors (txt_token,
txt_patch, txt_kind, txt_segment, txt_image, txt_pos, vis_latent, vis_kind, vis_segment,
vis_image, vis_pos); vis_t_BV is each vision slot's diffusion time (1 on clean CVAE slots).
Parameter names are the JAX ones ("stack.layers_0.txt.q_proj.kernel") in the JAX layouts
(kernels [in, *out]), so export is a rename and nothing else. This file is copied next to the
exported weights; keep it free of any mogao_jax import.
"""

from __future__ import annotations

import json
import math
import os

import torch
import torch.nn.functional as F

PAD, TXT, VIT, CVAE, NVAE = range(5)
_ORDER = (TXT, VIT, CVAE, NVAE)
T_EMBED_DIM = 256


_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32}


def load_safetensors(path: str) -> dict[str, torch.Tensor]:
  """A .safetensors file without the safetensors package (8-byte header size, JSON header,
  raw little-endian data), so this module needs torch and nothing else."""
  with open(path, "rb") as f:
    raw = f.read()
  n = int.from_bytes(raw[:8], "little")
  header, base = json.loads(raw[8:8 + n]), 8 + n
  out = {}
  for name, h in header.items():
    if name != "__metadata__":
      b, e = h["data_offsets"]
      out[name] = torch.frombuffer(bytearray(raw[base + b:base + e]),
                                   dtype=_DTYPES[h["dtype"]]).reshape(h["shape"])
  return out


def parse_table(spec: str) -> torch.Tensor:
  """'1100,1100,1110,1110' -> bool [5, 5] indexed by kind (rows: query, cols: key)."""
  table = torch.zeros(5, 5, dtype=torch.bool)
  for qi, row in enumerate(spec.split(",")):
    for ki, ch in enumerate(row.strip()):
      table[_ORDER[qi], _ORDER[ki]] = ch == "1"
  return table


def visibility(meta: dict, other: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
  """bool [B, L, L], as mogao_jax/model/masks.py."""
  s, i, k, t = meta["segment"], meta["image"], meta["kind"].long(), meta["pos"][..., 0]
  same_doc = (s[:, :, None] == s[:, None, :]) & (s[:, :, None] > 0)
  same_image = (i[:, :, None] == i[:, None, :]) & (i[:, :, None] > 0)
  rule_same = same.to(k.device)[k[:, :, None], k[:, None, :]]
  rule_other = other.to(k.device)[k[:, :, None], k[:, None, :]]
  causal = t[:, None, :] <= t[:, :, None]
  return same_doc & torch.where(same_image, rule_same, causal & rule_other)


def rope_angles(pos_BL3: torch.Tensor, head_dim: int, theta: float) -> torch.Tensor:
  """IL-RoPE angles [B, L, head_dim/2] (mogao_jax/model/rope.py)."""
  n_pairs = head_dim // 2
  n_inter = 3 * ((3 * n_pairs // 4) // 3)
  axes = torch.zeros(n_pairs, dtype=torch.long)
  axes[:n_inter] = torch.arange(n_inter) % 3
  inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
  pos = pos_BL3.float()
  is_h, is_w = (axes == 1).float().to(pos.device), (axes == 2).float().to(pos.device)
  p = pos[..., 0:1] + pos[..., 1:2] * is_h + pos[..., 2:3] * is_w
  return p * inv.float().to(pos.device)


def apply_rope(x_BLHD: torch.Tensor, angles_BLP: torch.Tensor) -> torch.Tensor:
  half = x_BLHD.shape[-1] // 2
  cos, sin = torch.cos(angles_BLP)[:, :, None], torch.sin(angles_BLP)[:, :, None]
  x1, x2 = x_BLHD[..., :half], x_BLHD[..., half:]
  return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def attention(q_BLHD, k_BLKD, v_BLKD, mask_BLL):
  """GQA with a boolean mask. Masked logits get a large finite negative (as JAX does), so a
  padding query with no visible key averages uniformly instead of producing NaN."""
  groups = q_BLHD.shape[2] // k_BLKD.shape[2]
  k = k_BLKD.repeat_interleave(groups, dim=2)
  v = v_BLKD.repeat_interleave(groups, dim=2)
  logits = torch.einsum("bqhd,bkhd->bhqk", q_BLHD, k) / math.sqrt(q_BLHD.shape[-1])
  logits = logits.masked_fill(~mask_BLL[:, None], -0.7 * torch.finfo(logits.dtype).max)
  return torch.einsum("bhqk,bkhd->bqhd", torch.softmax(logits, dim=-1), v)


def rms_norm(x, scale, eps):
  return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * scale


def modulate(x, shift, scale):
  return x * (1.0 + scale) + shift


def sincos_2d(h_BL, w_BL, dim: int, max_period: float = 10_000.0):
  quarter = dim // 4
  freqs = torch.exp(-math.log(max_period) * torch.arange(quarter, dtype=torch.float32,
                                                          device=h_BL.device) / quarter)
  def one(x):
    args = x.float()[..., None] * freqs
    return [torch.sin(args), torch.cos(args)]
  return torch.cat(one(h_BL) + one(w_BL), dim=-1)


def timestep_embedding(t_BL, dim: int, max_period: float = 10_000.0):
  half = dim // 2
  freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                          device=t_BL.device) / half)
  args = (t_BL.float() * 1000.0)[..., None] * freqs
  return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def edit_source(b: dict, keep_BVV: torch.Tensor | None = None) -> torch.Tensor:
  """model.edit_skip (mogao_jax/model/edit_skip.py), pairwise over the vision slots: each
  NVAE slot gets the clean latent, at its own (H, W) cell, of the most recent preceding (T
  smaller) CVAE image of its document with the same grid; zero without one. ``keep_BVV``
  (the guidance branches' key mask) drops sources a query may not read: the "none" branch
  has none, as the JAX sampler gives it."""
  kind, seg, img = b["vis_kind"], b["vis_segment"], b["vis_image"]
  t, h, w = b["vis_pos"].unbind(-1)
  same_img = (img[:, :, None] == img[:, None, :]) & (img[:, None, :] > 0)
  rows = torch.where(same_img, h[:, None, :] + 1, 0).amax(-1)  # the slot's image's grid
  cols = torch.where(same_img, w[:, None, :] + 1, 0).amax(-1)
  q = lambda x: x[:, :, None]  # noqa: E731
  k = lambda x: x[:, None, :]  # noqa: E731
  ok = ((q(kind) == NVAE) & (k(kind) == CVAE) & (q(seg) == k(seg)) & (q(seg) > 0)
        & (k(t) < q(t)) & (q(h) == k(h)) & (q(w) == k(w)) & (q(rows) == k(rows))
        & (q(cols) == k(cols)))
  if keep_BVV is not None:
    ok = ok & keep_BVV
  score = torch.where(ok, k(t), -1)
  pick = ok & (score == score.amax(-1, keepdim=True))  # one slot: that image's (H, W) cell
  return pick.float() @ b["vis_latent"].float()


class Mogao(torch.nn.Module):
  def __init__(self, cfg: dict, tensors: dict[str, torch.Tensor]):
    super().__init__()
    self.cfg = cfg
    # "." is not allowed in parameter names; "-" stands for it.
    self.params = torch.nn.ParameterDict(
        {k.replace(".", "-"): torch.nn.Parameter(v, requires_grad=False)
         for k, v in tensors.items()})
    self.other = parse_table(cfg["mask_other"])
    self.same = parse_table(cfg["mask_same"])

  @classmethod
  def from_dir(cls, path: str) -> "Mogao":
    with open(os.path.join(path, "config.json")) as f:
      cfg = json.load(f)
    return cls(cfg, load_safetensors(os.path.join(path, "model.safetensors")))

  def p(self, name: str) -> torch.Tensor:
    return self.params[name.replace(".", "-")]

  def dense(self, x, name: str, n_in: int = 1):
    """Our Dense: contracts the last n_in dims of x with kernel [*in, *out] (+ bias)."""
    kernel = self.p(f"{name}.kernel")
    y = torch.tensordot(x, kernel, dims=n_in)
    bias_name = f"{name}.bias".replace(".", "-")
    return y + self.params[bias_name] if bias_name in self.params else y

  def layer_norm(self, x, name):
    return F.layer_norm(x, x.shape[-1:], self.p(f"{name}.scale"), self.p(f"{name}.bias"), 1e-6)

  def tiny_vit(self, b):
    c, g = self.cfg, self.cfg["vit_grid"]
    x = self.dense(b["txt_patch"].float(), "vit.patch_embed")
    idx = b["txt_pos"][..., 1].clamp(0, g - 1) * g + b["txt_pos"][..., 2].clamp(0, g - 1)
    x = x + self.p("vit.pos_embed.embedding")[idx.long()]
    mask = self.vit_mask(b)
    for i in range(c["vit_depth"]):
      qkv = self.dense(self.layer_norm(x, f"vit.ln_attn_{i}"), f"vit.qkv_{i}")
      o = attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], mask)
      x = x + self.dense(o, f"vit.out_{i}", n_in=2)
      h = self.dense(self.layer_norm(x, f"vit.ln_mlp_{i}"), f"vit.fc1_{i}")
      x = x + self.dense(F.gelu(h, approximate="tanh"), f"vit.fc2_{i}")
    return self.layer_norm(x, "vit.post_ln")

  def siglip_slots(self, b):
    """model.vit == "siglip" (mogao_jax/model/siglip.py SiglipImages), over the text stream
    with a same-image mask: the same numbers as the per-image batch while rows stay within
    the image capacity (model.vit_images), which the packer guarantees."""
    c, g = self.cfg, self.cfg["vit_grid"]
    pg, w, eps = c["vit_pos_grid"] or g, c["vit_width"], c["vit_norm_eps"]
    table = self.p("vit.position_embedding")
    if pg != g:  # the pretrained table resized to the configured grid, as HF SigLIP does
      table = F.interpolate(table.reshape(1, pg, pg, w).permute(0, 3, 1, 2), size=(g, g),
                            mode="bicubic", align_corners=False)
      table = table.permute(0, 2, 3, 1).reshape(g * g, w)
    idx = b["txt_pos"][..., 1].clamp(0, g - 1) * g + b["txt_pos"][..., 2].clamp(0, g - 1)
    x = b["txt_patch"].float() @ self.p("vit.encoder.patch_kernel").reshape(-1, w)
    x = x + self.p("vit.encoder.patch_bias") + table[idx.long()]
    ln = lambda x, n: F.layer_norm(  # noqa: E731
        x, (w,), self.p(f"{n}.scale"), self.p(f"{n}.bias"), eps)
    heads = lambda y: y.reshape(*y.shape[:-1], c["vit_heads"], -1)  # noqa: E731
    mask = self.vit_mask(b)
    for i in range(c["vit_depth"]):
      pre = f"vit.encoder.layers_{i}"
      h = ln(x, f"{pre}.layer_norm1")
      q, k, v = (heads(self.dense(h, f"{pre}.{n}_proj")) for n in "qkv")
      o = attention(q, k, v, mask).flatten(-2)
      x = x + self.dense(o, f"{pre}.out_proj")
      h = F.gelu(self.dense(ln(x, f"{pre}.layer_norm2"), f"{pre}.fc1"), approximate="tanh")
      x = x + self.dense(h, f"{pre}.fc2")
    return ln(x, "vit.encoder.post_layernorm")

  def vit_mask(self, b):
    """Each VIT patch reads the patches of its own image only."""
    is_vit = b["txt_kind"] == VIT
    img, seg = b["txt_image"], b["txt_segment"]
    return ((img[:, :, None] == img[:, None, :]) & (seg[:, :, None] == seg[:, None, :])
            & is_vit[:, :, None] & is_vit[:, None, :])

  def embed_text_stream(self, b):
    tok = self.p("embed_tokens.embedding")[b["txt_token"].long()]
    feat = self.siglip_slots(b) if self.cfg.get("vit") == "siglip" else self.tiny_vit(b)
    h = F.gelu(self.dense(feat, "connector.fc1"), approximate="tanh")
    feat = self.dense(h, "connector.fc2")
    return torch.where((b["txt_kind"] == VIT)[..., None], feat, tok)

  def pathway_qkv(self, x, pre: str, mod=None):
    c = self.cfg
    h = rms_norm(x, self.p(f"{pre}.input_layernorm.scale"), c["norm_eps"])
    if mod is not None:
      h = modulate(h, *mod)
    q, k, v = (self.dense(h, f"{pre}.{n}_proj") for n in "qkv")
    if c["qk_norm"]:
      q = rms_norm(q, self.p(f"{pre}.q_norm.scale"), c["norm_eps"])
      k = rms_norm(k, self.p(f"{pre}.k_norm.scale"), c["norm_eps"])
    return q, k, v

  def pathway_ffn(self, x, pre: str, mod=None):
    h = rms_norm(x, self.p(f"{pre}.post_attention_layernorm.scale"), self.cfg["norm_eps"])
    if mod is not None:
      h = modulate(h, *mod)
    gate, up = self.dense(h, f"{pre}.mlp.gate_proj"), self.dense(h, f"{pre}.mlp.up_proj")
    return self.dense(F.silu(gate) * up, f"{pre}.mlp.down_proj")

  def block(self, i, x_txt, x_vis, mask, angles, mod_BV6D):
    pre = f"stack.layers_{i}"
    m = mod_BV6D + self.p(f"{pre}.adaln_table")
    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = m.unbind(dim=2)
    q_t, k_t, v_t = self.pathway_qkv(x_txt, f"{pre}.txt")
    q_v, k_v, v_v = self.pathway_qkv(x_vis, f"{pre}.vis", (shift_a, scale_a))
    q = apply_rope(torch.cat([q_t, q_v], 1), angles)
    k = apply_rope(torch.cat([k_t, k_v], 1), angles)
    o = attention(q, k, torch.cat([v_t, v_v], 1), mask)
    n_txt = x_txt.shape[1]
    x_txt = x_txt + self.dense(o[:, :n_txt], f"{pre}.txt.o_proj", n_in=2)
    x_vis = x_vis + (1.0 + gate_a) * self.dense(o[:, n_txt:], f"{pre}.vis.o_proj", n_in=2)
    x_txt = x_txt + self.pathway_ffn(x_txt, f"{pre}.txt")
    x_vis = x_vis + (1.0 + gate_m) * self.pathway_ffn(x_vis, f"{pre}.vis", (shift_m, scale_m))
    return x_txt, x_vis

  @torch.no_grad()
  def forward(self, b: dict, vis_t_BV: torch.Tensor, keep_BLL: torch.Tensor | None = None):
    """(logits_BTV, velocity_BVC); ``keep_BLL`` (optional, bool over [text ; vision] slots)
    drops keys on top of the visibility rule: the guidance branches of torch_generate.py."""
    c = self.cfg
    x_txt = self.embed_text_stream(b)
    x_vis = self.dense(b["vis_latent"].float(), "vis_in")
    if c.get("edit_skip", False):
      n_txt = b["txt_kind"].shape[1]
      keep = None if keep_BLL is None else keep_BLL[:, n_txt:, n_txt:]
      x_vis = x_vis + self.dense(edit_source(b, keep), "edit_skip")
    if c.get("vis_pos_embed", "none") == "sincos":
      x_vis = x_vis + sincos_2d(b["vis_pos"][..., 1], b["vis_pos"][..., 2], c["width"])
    emb = timestep_embedding(vis_t_BV, T_EMBED_DIM)
    cond = F.silu(self.dense(F.silu(self.dense(emb, "t_fc1")), "t_fc2"))
    meta = {f: torch.cat([b[f"txt_{f}"], b[f"vis_{f}"]], 1)
            for f in ("segment", "kind", "image", "pos")}
    mask = visibility(meta, self.other, self.same)
    if keep_BLL is not None:
      mask = mask & keep_BLL
    angles = rope_angles(meta["pos"], c["head_dim"], c["rope_theta"])
    mod = self.dense(cond, "t_mod")
    for i in range(c["depth"]):
      x_txt, x_vis = self.block(i, x_txt, x_vis, mask, angles, mod)
    h_txt = rms_norm(x_txt, self.p("txt_norm.scale"), c["norm_eps"])
    logits = (h_txt @ self.p("embed_tokens.embedding").T if c["tie_embeddings"]
              else self.dense(h_txt, "lm_head"))
    fin = self.dense(cond, "t_final")
    h_vis = modulate(rms_norm(x_vis, self.p("vis_norm.scale"), c["norm_eps"]),
                     fin[:, :, 0], fin[:, :, 1])
    out = self.dense(h_vis, "vis_head")
    if c.get("predict", "velocity") == "x1":  # the head predicts x1; hand back the velocity
      out = (out - b["vis_latent"].float()) / (1.0 - vis_t_BV.float()).clamp(min=0.05)[..., None]
    return logits, out
