"""Line plots as PNG with Pillow's ImageDraw (matplotlib is not a dependency)."""

from __future__ import annotations

import math

from PIL import Image, ImageDraw, ImageFont

_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))
_PANEL_W, _PANEL_H = 420, 320
_MARGIN = dict(left=62, right=28, top=28, bottom=36)
_LEGEND_W = 320  # px per legend column
_TICKS = 5


def _ticks(lo: float, hi: float, n: int = _TICKS) -> list[float]:
  if hi <= lo:
    return [lo]
  return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def _label(v: float) -> str:
  return f"{v:.3g}"


def _panel(draw, font, box, name: str, series: dict[str, list[tuple[float, float]]],
           colours: dict[str, tuple], x_label: str = "step") -> None:
  """One panel: axes with ticks, the title, a line per series."""
  x0, y0, x1, y1 = box
  left, top = x0 + _MARGIN["left"], y0 + _MARGIN["top"]
  right, bottom = x1 - _MARGIN["right"], y1 - _MARGIN["bottom"]
  pts = [p for s in series.values() for p in s]
  xlo, xhi = min(p[0] for p in pts), max(p[0] for p in pts)
  ylo, yhi = min(p[1] for p in pts), max(p[1] for p in pts)
  if yhi - ylo < 1e-12:  # a flat line: give it some room
    ylo, yhi = ylo - 0.5, yhi + 0.5
  xhi = xhi if xhi > xlo else xlo + 1
  sx = lambda x: left + (x - xlo) / (xhi - xlo) * (right - left)  # noqa: E731
  sy = lambda y: bottom - (y - ylo) / (yhi - ylo) * (bottom - top)  # noqa: E731
  draw.text((left, y0 + 6), name, fill="black", font=font)
  draw.rectangle((left, top, right, bottom), outline="black")
  for y in _ticks(ylo, yhi):
    draw.line((left - 4, sy(y), left, sy(y)), fill="black")
    draw.line((left, sy(y), right, sy(y)), fill=(230, 230, 230))
    draw.text((x0 + 4, sy(y) - 6), _label(y), fill="black", font=font)
  for x in sorted({round(x) for x in _ticks(xlo, xhi)}):  # steps: whole numbers
    draw.line((sx(x), bottom, sx(x), bottom + 4), fill="black")
    draw.text((sx(x) - 8, bottom + 6), f"{x:.0f}", fill="black", font=font)
  draw.text(((left + right) // 2 - 12, y1 - 14), x_label, fill="black", font=font)
  for run, s in series.items():
    xy = [(sx(x), sy(y)) for x, y in s]
    if len(xy) == 1:
      draw.ellipse((xy[0][0] - 2, xy[0][1] - 2, xy[0][0] + 2, xy[0][1] + 2), fill=colours[run])
    else:
      draw.line(xy, fill=colours[run], width=2)


def _grow(img, height: int):
  out = Image.new("RGB", (img.width, height), "white")
  out.paste(img, (0, 0))
  return out


def line_panels(path: str, panels: dict[str, dict[str, list[tuple[float, float]]]],
                title: str = "", x_label: str = "step") -> None:
  """``panels``: panel name -> run -> [(x, y)]; side by side, one colour per run, a legend."""
  runs = list(dict.fromkeys(r for p in panels.values() for r, s in p.items() if s))
  colours = {r: _COLOURS[i % len(_COLOURS)] for i, r in enumerate(runs)}
  font = ImageFont.load_default()
  n = max(1, len(panels))
  img = Image.new("RGB", (_PANEL_W * n, _PANEL_H + 24), "white")
  draw = ImageDraw.Draw(img)
  draw.text((8, 6), title, fill="black", font=font)
  for i, (name, series) in enumerate(panels.items()):
    series = {r: s for r, s in series.items() if s}
    if series:
      _panel(draw, font, (i * _PANEL_W, 24, (i + 1) * _PANEL_W, 24 + _PANEL_H), name, series,
             colours, x_label)
  cols = max(1, img.width // _LEGEND_W)
  legend_h = 18 * math.ceil(len(runs) / cols) + 10
  img = _grow(img, _PANEL_H + 24 + legend_h)
  draw = ImageDraw.Draw(img)
  for i, run in enumerate(runs):
    x, y = 12 + (i % cols) * _LEGEND_W, _PANEL_H + 30 + 18 * (i // cols)
    draw.line((x, y + 7, x + 24, y + 7), fill=colours[run], width=3)
    draw.text((x + 30, y), run, fill="black", font=font)
  img.save(path)
