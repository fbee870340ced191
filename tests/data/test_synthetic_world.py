"""The synthetic world is learnable: hard negatives look like the gold sources, facts parse back, and the
seed changes the world."""

import random

from mmrag_jax.data import read_webqa
from mmrag_jax.data.synthetic import generate_webqa
from mmrag_jax.data.synthetic import world as w


def _shares_words(name: str, gold_names: set[str]) -> bool:
  return any(name.split()[-1] == g.split()[-1] or name[:3] == g[:3] for g in gold_names)


def test_image_questions_have_negatives_that_share_words_with_the_gold_landmark(tmp_path):
  generate_webqa(str(tmp_path), num_train=40, num_val=4, num_test=2, seed=2)
  questions = [q for q in read_webqa(str(tmp_path), "train", verbose=False).questions if q.category != "text"]
  hard = 0
  for q in questions:
    gold_names = {c.title for c in q.candidates if c.id in q.gold_ids}
    negatives = [c for c in q.candidates if c.kind == "image" and c.id not in q.gold_ids]
    assert all(c.title not in gold_names for c in negatives)  # a negative picture is another landmark
    hard += any(_shares_words(c.title, gold_names) for c in negatives)
  assert hard >= 0.9 * len(questions)


def test_confusable_picks_half_hard_entities_and_never_an_excluded_one():
  rng = random.Random(0)
  entities = w.make_world(rng, 60)
  target = entities[0]
  for _ in range(20):
    chosen = w.confusable(rng, entities, [target], 4)
    assert len(chosen) == len(set(chosen)) == 4 and target not in chosen
    assert sum(_shares_words(e.name, {target.name}) for e in chosen) >= 2


def test_fact_sentences_parse_back_to_their_values():
  e = w.make_world(random.Random(1), 1)[0]
  assert w.Entity.parse_fact(e.fact("city")) == (e.name, "city", e.city)
  assert w.Entity.parse_fact(e.fact("year")) == (e.name, "year", str(e.year))
  assert w.Entity.parse_fact("A sentence about something else.") is None


def test_the_seed_changes_names_cities_and_pictures():
  a, b = (w.make_world(random.Random(seed), 30) for seed in (0, 1))
  assert {e.name for e in a} != {e.name for e in b}
  assert [e.city for e in a] != [e.city for e in b]
  assert [(e.scene.color, e.scene.shape) for e in a] != [(e.scene.color, e.scene.shape) for e in b]
