"""A small made-up world shared by the synthetic WebQA and MultimodalQA writers.

Every entity (a landmark with an invented name) has one picture (a `Scene`) and two text facts (the
city it stands in, the year it was founded). Questions are generated so that their answers follow from
the gold sources only: a color question needs the landmark's picture, a city question its city fact.
"""

from __future__ import annotations

import dataclasses
import random
import re

from mmrag_jax.data.synthetic.scenes import COLORS, SHAPES, SIDES, Scene

__all__ = ["Entity", "FACT_KINDS", "confusable", "hex_id", "make_world", "others", "plural"]

_SYLLABLES = ("va", "lor", "ken", "mi", "dra", "zu", "tor", "bel", "qui", "sa", "no", "rix", "pel", "ta", "gon",
              "fe", "lun", "ca", "mor", "ti")
_KINDS = ("Tower", "Bridge", "Gate", "Temple", "Fountain", "Castle", "Arch", "Hall")
FACT_KINDS = ("city", "year")
_FACT_PATTERNS = {"city": re.compile(r"(.+) is a landmark located in the city of (\w+)\."),
                  "year": re.compile(r"(.+) was founded in (\d+) and is visited by many tourists\.")}


@dataclasses.dataclass(frozen=True)
class Entity:
  """A landmark: its name, its city and founding year (text facts) and its picture."""

  index: int
  name: str
  city: str
  year: int
  scene: Scene

  def fact(self, kind: str) -> str:
    """The sentence of one text fact ('city' or 'year')."""
    if kind == "city":
      return f"{self.name} is a landmark located in the city of {self.city}."
    if kind == "year":
      return f"{self.name} was founded in {self.year} and is visited by many tourists."
    raise ValueError(kind)

  @staticmethod
  def parse_fact(text: str) -> tuple[str, str, str] | None:
    """(landmark name, fact kind, value) of a sentence written by `fact`; None for any other text."""
    for kind, pattern in _FACT_PATTERNS.items():
      match = pattern.fullmatch(text)
      if match:
        return match.group(1), kind, match.group(2)
    return None

  @property
  def url(self) -> str:
    return "https://en.wikipedia.org/wiki/" + self.name.replace(" ", "_")


def _word(rng: random.Random, syllables: int) -> str:
  return "".join(rng.choice(_SYLLABLES) for _ in range(syllables)).capitalize()


def make_world(rng: random.Random, num_entities: int) -> list[Entity]:
  """`num_entities` landmarks with unique names, varied pictures (sizes, colors, shapes, counts, formats)."""
  names: set[str] = set()
  entities = []
  colors, shapes = list(COLORS), list(SHAPES)
  while len(entities) < num_entities:
    name = f"{_word(rng, 2)} {rng.choice(_KINDS)}"
    if name in names:
      continue
    names.add(name)
    width, height = rng.choice(SIDES), rng.choice(SIDES)
    max_count = min(5, (width // 28) * (height // 28))
    scene = Scene(width=width, height=height, shape=rng.choice(shapes), color=rng.choice(colors),
                  count=rng.randint(1, max_count), background=rng.randrange(3),
                  image_format=rng.choice(("PNG", "JPEG")))
    entities.append(Entity(index=len(entities), name=name, city=_word(rng, 3), year=rng.randint(1700, 2010),
                           scene=scene))
  return entities


def hex_id(rng: random.Random) -> str:
  """A 32-hex-digit id like the benchmarks' Guids / doc ids."""
  return f"{rng.getrandbits(128):032x}"


def others(rng: random.Random, entities: list[Entity], exclude: list[Entity], n: int) -> list[Entity]:
  """`n` distinct entities not in `exclude`, in random order."""
  pool = [e for e in entities if e not in exclude]
  return rng.sample(pool, min(n, len(pool)))


def confusable(rng: random.Random, entities: list[Entity], exclude: list[Entity], n: int,
               like: list[Entity] | None = None) -> list[Entity]:
  """`n` distinct entities not in `exclude`, about half of them hard: their names share a word or the
  first syllable with a name in `like` (default `exclude`), so one shared word does not decide relevance."""
  like = exclude if like is None else like
  words = {part for e in like for part in e.name.split()[1:]}
  heads = {e.name[:3] for e in like}
  pool = [e for e in entities if e not in exclude]
  similar = [e for e in pool if words & set(e.name.split()[1:]) or e.name[:3] in heads]
  hard = rng.sample(similar, min(len(similar), (n + 1) // 2))
  rest = [e for e in pool if e not in hard]
  chosen = hard + rng.sample(rest, min(n - len(hard), len(rest)))
  return rng.sample(chosen, len(chosen))


def plural(shape: str) -> str:
  return shape + "s"
