"""The HTML report: its content checked on the written page, and its filters, images and escaping checked
on the DOM a real headless Chromium produced after the page's script ran."""

from __future__ import annotations

import base64
import io
import urllib.parse

import numpy as np
import pytest
from PIL import Image

from mmrag_jax.data.images import ImageReadError
from mmrag_jax.evaluation.report import thumbnail_jpeg, write_report
from tests.evaluation import report_fixtures as rf

NUM_RECORDS = len(rf.build_records())
# URL hash -> (category filter, correctness filter) it must apply; None = no filter on that field.
FILTER_CASES = {
    "": (None, None),
    "category=color": ("color", None),
    "correct=incorrect": (None, "incorrect"),
    "category=color&correct=correct": ("color", "correct"),
    "correct=unlabeled": (None, "unlabeled"),
    urllib.parse.urlencode({"category": "Compose(TableQ,ImageQ)"}): ("Compose(TableQ,ImageQ)", None),
    "category=no-such-category&correct=incorrect": (None, "incorrect"),  # unknown values fall back to all
}
THUMBNAIL_PX = 256


@pytest.fixture(scope="module")
def records() -> list[dict]:
  return rf.build_records()


@pytest.fixture(scope="module")
def report_path(tmp_path_factory, records) -> str:
  path = str(tmp_path_factory.mktemp("report") / "report.html")
  assert write_report(path, records, rf.webqa_like_metrics(), images=rf.image_store(),
                      thumbnail_px=THUMBNAIL_PX) == path
  return path


@pytest.fixture(scope="module")
def page(report_path) -> rf.Node:
  with open(report_path, encoding="utf-8") as f:
    return rf.parse_html(f.read())


@pytest.fixture(scope="module")
def chromium() -> str:
  binary = rf.find_chromium()
  if binary is None:
    pytest.skip(f"no Chromium binary on PATH (looked for {', '.join(rf.CHROMIUM_NAMES)})")
  return binary


@pytest.fixture(scope="module")
def doms(chromium, report_path) -> dict[str, str]:
  return rf.dump_doms(chromium, report_path, list(FILTER_CASES))


def _card(root: rf.Node, qid: str) -> rf.Node:
  (card,) = root.find_all("section", lambda n: n.attrs.get("data-qid") == qid)
  return card


def _candidate_figure(root: rf.Node, cid: str) -> rf.Node:
  (figure,) = root.find_all("figure", lambda n: n.attrs.get("data-candidate-id") == cid)
  return figure


def _by_id(root: rf.Node, element_id: str) -> rf.Node:
  (node,) = [n for n in root.iter() if n.attrs.get("id") == element_id]
  return node


# -- the page as written ---------------------------------------------------------------------------------

def test_summary_table_shows_scalars_and_reasons_for_missing_values(page):
  table = _by_id(page, "metrics-summary")
  rows = {tr.attrs["data-metric"]: tr.find_all("td")[0].text() for tr in table.find_all("tr")}
  assert rows["retrieval_f1"] == "0.6250"
  assert rows["qa_fl"] == "n/a (no BART checkpoint)"
  assert rows["qa"] == "n/a"
  assert rows["stage1/recall@1"] == "0.5000"
  assert rows["stage1/mean_kept_score"] == "0.7500"  # a numpy scalar
  assert rows["mode"] == "val"
  assert rows["fluency.available"] == "false"
  assert "qa_fl_reason" not in rows
  assert "by_category" not in rows


def test_by_category_table_has_a_row_per_category(page):
  table = _by_id(page, "metrics-by_category")
  header = [th.text() for th in table.find_all("thead")[0].find_all("th")]
  assert header == ["category", "count", "retrieval_f1", "qa_fl", "qa_acc", "qa"]
  body = {tr.attrs["data-group"]: [td.text() for td in tr.find_all("td")] for tr in table.find_all("tbody")[0]
          .find_all("tr")}
  assert body == {"color": ["2", "0.7500", "n/a", "0.5000", "n/a"], "shape": ["1", "0.0000", "n/a", "0.0000", "n/a"]}


def test_cards_carry_qid_category_and_correctness(page, records):
  cards = page.find_all("section", lambda n: n.has_class("question"))
  expected_state = {True: "true", False: "false", None: "unlabeled"}
  assert [(c.attrs["data-qid"], c.attrs["data-category"], c.attrs["data-correct"]) for c in cards] == [
      (r["qid"], r["category"], expected_state[r["correct"]]) for r in records]


def test_cited_evidence_resolves_prompt_numbers_in_citation_order(page, records):
  for record in records:
    titles = {c["id"]: c["title"] for c in record["candidates"]}
    items = _card(page, record["qid"]).find_all("li", lambda n: "data-number" in n.attrs)
    assert [int(li.attrs["data-number"]) for li in items] == record["evidence_numbers"]
    for number, li in zip(record["evidence_numbers"], items):
      if 1 <= number <= len(record["kept_ids"]):
        assert li.attrs["data-candidate-id"] == record["kept_ids"][number - 1]
        assert titles[record["kept_ids"][number - 1]] in li.text()
      else:
        assert li.has_class("bad-citation") and "is not a prompt candidate" in li.text()


def test_candidates_show_score_kept_number_and_gold_marks(page, records):
  for record in records:
    card = _card(page, record["qid"])
    for candidate in record["candidates"]:
      figure = _candidate_figure(card, candidate["id"])
      marks = {span.text() for span in figure.find_all("span", lambda n: n.has_class("mark"))}
      expected = ({f"kept [{candidate['number']}]"} if candidate["kept"] else set()) | (
          {"gold"} if candidate["gold"] else set())
      assert marks == expected, candidate["id"]
      assert f"score {candidate['stage1_score']:.4f}" in figure.text()
    kept_in_page = [f.attrs["data-candidate-id"] for f in card.find_all("div", lambda n: n.has_class("kept"))[0]
                    .find_all("figure")]
    assert sorted(kept_in_page) == sorted(record["kept_ids"])


def test_unlabeled_question_shows_no_score_and_no_gold(page):
  card = _card(page, "q-yesno-1")
  assert card.find_all("span", lambda n: n.has_class("badge"))[0].text() == "unlabeled"
  assert card.find_all("dd", lambda n: n.has_class("answer-score"))[0].text() == "n/a"
  assert card.find_all("dd", lambda n: n.has_class("gold-answers"))[0].text() == "(unlabeled)"


def test_list_answers_show_every_span(page):
  answer = _card(page, "q-mmqa-1").find_all("dd", lambda n: n.has_class("answer"))[0]
  assert [s.text() for s in answer.find_all("span")] == ["Paris", "Lyon"]


def test_page_loads_nothing_from_outside(page):
  assert all(img.attrs["src"].startswith("data:image/jpeg;base64,") for img in page.find_all("img"))
  assert not [n for n in page.iter() if n.tag in ("script", "link", "iframe") and ("src" in n.attrs or
                                                                                  "href" in n.attrs)]
  (csp,) = page.find_all("meta", lambda n: n.attrs.get("http-equiv") == "Content-Security-Policy")
  assert "default-src 'none'" in csp.attrs["content"]


def test_kept_and_gold_mode_embeds_only_those_images(tmp_path, records):
  path = write_report(str(tmp_path / "r.html"), records, {}, images=rf.image_store(), thumbnails="kept_and_gold")
  with open(path, encoding="utf-8") as f:
    root = rf.parse_html(f.read())
  for record in records:
    for candidate in record["candidates"]:
      if candidate["kind"] == "image" and candidate["image_ref"] in rf.IMAGES:
        has_image = bool(_candidate_figure(_card(root, record["qid"]), candidate["id"]).find_all("img"))
        assert has_image == (candidate["kept"] or bool(candidate["gold"])), candidate["id"]


def test_without_an_image_store_images_are_placeholders(tmp_path, records):
  path = write_report(str(tmp_path / "r.html"), records, {}, images=None)
  with open(path, encoding="utf-8") as f:
    root = rf.parse_html(f.read())
  assert not root.find_all("img")
  placeholder = _candidate_figure(root, "img-red").find_all("div", lambda n: n.has_class("placeholder"))[0]
  assert placeholder.text() == "no image store given"
  assert not (tmp_path / "r.html.partial").exists()


def test_record_missing_a_key_is_named_in_the_error(tmp_path, records):
  broken = [dict(r) for r in records]
  del broken[2]["kept_ids"]
  with pytest.raises(ValueError, match=r"record 2 \(qid 'q-shape-1'\): missing key\(s\) \['kept_ids'\]"):
    write_report(str(tmp_path / "r.html"), broken, {}, images=None)
  broken = [dict(r) for r in records]
  broken[0]["correct"] = "yes"
  with pytest.raises(ValueError, match="'correct' must be true, false or null"):
    write_report(str(tmp_path / "r.html"), broken, {}, images=None)
  assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("mode, size, image_format, expected_size", [
    ("RGB", (1280, 960), "JPEG", (256, 192)),  # large JPEG: shrunk in draft mode before decoding
    ("RGBA", (100, 400), "PNG", (64, 256)),
    ("RGB", (50, 30), "PNG", (50, 30)),  # never enlarged
])
def test_thumbnail_is_an_rgb_jpeg_within_the_size_limit(mode, size, image_format, expected_size):
  color = (200, 90, 20)
  buffer = io.BytesIO()
  Image.new(mode, size, color + ((255,) if mode == "RGBA" else ())).save(buffer, format=image_format)
  thumbnail = Image.open(io.BytesIO(thumbnail_jpeg(buffer.getvalue(), 256)))
  assert (thumbnail.format, thumbnail.mode, thumbnail.size) == ("JPEG", "RGB", expected_size)
  np.testing.assert_allclose(np.asarray(thumbnail).reshape(-1, 3).mean(0), color, atol=6)


def test_undecodable_thumbnail_raises_image_read_error():
  with pytest.raises(ImageReadError, match="image 'x': cannot decode image") as info:
    thumbnail_jpeg(b"not an image", 256, where="image 'x'")
  assert info.value.reason == "undecodable_image"


# -- the page in a browser -------------------------------------------------------------------------------

@pytest.mark.parametrize("fragment", list(FILTER_CASES), ids=lambda f: f or "no_hash")
def test_url_hash_filters_the_cards(doms, records, fragment):
  category, correctness = FILTER_CASES[fragment]
  state_name = {True: "correct", False: "incorrect", None: "unlabeled"}
  expected = {r["qid"] for r in records
              if category in (None, r["category"]) and correctness in (None, state_name[r["correct"]])}
  root = rf.parse_html(doms[fragment])
  cards = root.find_all("section", lambda n: n.has_class("question"))
  assert len(cards) == NUM_RECORDS
  assert {c.attrs["data-qid"] for c in cards if "hidden" not in c.attrs} == expected
  assert _by_id(root, "shown-count").text() == f"{len(expected)} of {NUM_RECORDS} questions shown"


def test_image_candidates_are_downscaled_jpeg_data_uris(doms, records):
  root = rf.parse_html(doms[""])
  checked = 0
  for record in records:
    for candidate in record["candidates"]:
      if candidate["image_ref"] not in rf.IMAGES:
        continue
      (img,) = _candidate_figure(_card(root, record["qid"]), candidate["id"]).find_all("img")
      prefix = "data:image/jpeg;base64,"
      assert img.attrs["src"].startswith(prefix)
      thumbnail = Image.open(io.BytesIO(base64.b64decode(img.attrs["src"][len(prefix):])))
      assert thumbnail.format == "JPEG"
      color, (width, height) = rf.IMAGES[candidate["image_ref"]]
      scale = min(1.0, THUMBNAIL_PX / max(width, height))
      assert abs(thumbnail.size[0] - width * scale) <= 1 and abs(thumbnail.size[1] - height * scale) <= 1
      np.testing.assert_allclose(np.asarray(thumbnail.convert("RGB")).reshape(-1, 3).mean(0), color, atol=6)
      checked += 1
  assert checked == 6


def test_missing_and_undecodable_images_show_placeholders(doms):
  root = rf.parse_html(doms[""])
  for cid, words in (("img-missing", "image missing"), ("img-broken", "image cannot be decoded")):
    figure = _candidate_figure(root, cid)
    assert not figure.find_all("img")
    (placeholder,) = figure.find_all("div", lambda n: n.has_class("placeholder"))
    assert placeholder.text().startswith(words)


def test_untrusted_text_stays_text(doms):
  dom = doms[""]
  root = rf.parse_html(dom)
  scripts = root.find_all("script")
  assert len(scripts) == 1 and "alert" not in scripts[0].text()
  card = _card(root, "q-shape-1")
  assert rf.SCRIPT_PAYLOAD in card.find_all("pre", lambda n: n.has_class("completion"))[0].text()
  assert rf.SCRIPT_PAYLOAD in card.find_all("pre", lambda n: n.has_class("reasoning"))[0].text()
  assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
  question = card.find_all("h2")[0]
  assert question.text() == "Is the <b>tower</b> round?" and not question.find_all("b")
  assert 'Fish & "Chips" <i>shop</i>' in _candidate_figure(card, "txt-c").text()


def test_screenshot_is_a_nonblank_png(chromium, report_path, tmp_path):
  png = str(tmp_path / "report.png")
  rf.screenshot(chromium, report_path, png, (1000, 800))
  image = Image.open(png)
  assert image.format == "PNG" and image.size == (1000, 800)
  pixels = np.asarray(image.convert("RGB")).astype(float)
  assert pixels.std() > 5
  assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 30
