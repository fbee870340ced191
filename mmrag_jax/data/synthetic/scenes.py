"""Procedural images for the synthetic benchmarks: a few shapes of one color on a plain background.

A `Scene` fully determines its picture, so a test can check decoded bytes against the named content
(the pixel at the centre of every shape has the shape's color; the count of shapes is `count`).
"""

from __future__ import annotations

import dataclasses
import io
import math

from PIL import Image, ImageDraw

__all__ = ["COLORS", "SHAPES", "SIDES", "Scene", "describe", "draw_scene", "encode_scene"]

# Names are members of WebQA's official color / shape keyword sets, so the keyword metrics see them.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "blue": (30, 60, 220),
    "green": (30, 170, 60),
    "yellow": (240, 220, 30),
    "orange": (245, 140, 20),
    "purple": (140, 50, 180),
    "pink": (245, 130, 190),
    "brown": (130, 80, 30),
    "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle", "diamond", "star", "hexagon")
_BACKGROUNDS: tuple[tuple[int, int, int], ...] = ((250, 250, 245), (225, 235, 245), (235, 245, 225))
SIDES = (56, 84, 112)


@dataclasses.dataclass(frozen=True)
class Scene:
  """`count` shapes of kind `shape` and color `color` on a `width` x `height` background (pixels)."""

  width: int
  height: int
  shape: str
  color: str
  count: int
  background: int = 0
  image_format: str = "PNG"

  def __post_init__(self):
    if self.shape not in SHAPES or self.color not in COLORS:
      raise ValueError(f"unknown shape/color {self.shape!r}/{self.color!r}")
    if not 1 <= self.count <= len(self.cells()):
      raise ValueError(f"{self.count} shapes do not fit a {self.width}x{self.height} scene")


  def cells(self) -> list[tuple[int, int, int, int]]:
    """Candidate boxes (x0, y0, x1, y1) on a grid of 28-pixel cells, row-major."""
    cell = 28
    return [(x, y, x + cell, y + cell) for y in range(0, self.height - cell + 1, cell)
            for x in range(0, self.width - cell + 1, cell)]

  def boxes(self) -> list[tuple[int, int, int, int]]:
    """Boxes of the drawn shapes: the first `count` cells, spread with a fixed stride over the grid."""
    cells = self.cells()
    stride = max(1, len(cells) // self.count)
    return [cells[(i * stride) % len(cells)] for i in range(self.count)]


def _polygon(shape: str, box: tuple[int, int, int, int]) -> list[tuple[float, float]]:
  x0, y0, x1, y1 = box
  cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2 - 3
  if shape == "triangle":
    return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
  if shape == "diamond":
    return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
  if shape == "hexagon":
    return [(cx + r * math.cos(math.pi / 3 * k), cy + r * math.sin(math.pi / 3 * k)) for k in range(6)]
  if shape == "star":
    points = []
    for k in range(10):
      radius = r if k % 2 == 0 else r * 0.5
      angle = -math.pi / 2 + math.pi / 5 * k
      points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return points
  raise ValueError(shape)


def draw_scene(scene: Scene) -> Image.Image:
  """Renders the scene as an RGB image of size (width, height)."""
  image = Image.new("RGB", (scene.width, scene.height), _BACKGROUNDS[scene.background % len(_BACKGROUNDS)])
  draw = ImageDraw.Draw(image)
  fill = COLORS[scene.color]
  for box in scene.boxes():
    inset = (box[0] + 3, box[1] + 3, box[2] - 3, box[3] - 3)
    if scene.shape == "circle":
      draw.ellipse(inset, fill=fill)
    elif scene.shape == "square":
      draw.rectangle(inset, fill=fill)
    else:
      draw.polygon(_polygon(scene.shape, box), fill=fill)
  return image


def encode_scene(scene: Scene) -> bytes:
  """The scene encoded in its `image_format` (PNG: lossless; JPEG: quality 95, no chroma subsampling)."""
  buffer = io.BytesIO()
  image = draw_scene(scene)
  if scene.image_format == "JPEG":
    image.save(buffer, format="JPEG", quality=95, subsampling=0)
  else:
    image.save(buffer, format="PNG")
  return buffer.getvalue()


def describe(scene: Scene) -> str:
  """A caption in words, e.g. '3 red circles'."""
  noun = scene.shape if scene.count == 1 else scene.shape + ("es" if scene.shape.endswith("x") else "s")
  return f"{scene.count} {scene.color} {noun}"
