"""config.json conversion: transformers reads what we write, quietly, and we read every rope layout."""

from __future__ import annotations

import json
import logging

import pytest
import transformers

from mmrag_jax.model import config as config_lib

ROPE_WARNING = "Unrecognized keys in `rope_parameters`"


@pytest.fixture
def transformers_log():
  """Records of the `transformers` logger at WARNING and above (it does not propagate to the root)."""
  records: list[logging.LogRecord] = []
  handler = logging.Handler(logging.WARNING)
  handler.emit = records.append
  logger = logging.getLogger("transformers")
  level = logger.level
  logger.addHandler(handler)
  logger.setLevel(logging.WARNING)
  yield records
  logger.removeHandler(handler)
  logger.setLevel(level)


def _write(directory, hf: dict) -> str:
  with open(directory / "config.json", "w") as f:
    json.dump(hf, f)
  return str(directory)


def _old_layout(config: config_lib.Qwen25VLConfig) -> dict:
  """What `to_hf_dict` wrote before: a `type: mrope` rope dict both at the top level and in text_config."""
  hf = config.to_hf_dict()
  rope = {"type": "mrope", "rope_type": "default", "rope_theta": config.text.rope_theta,
          "mrope_section": list(config.text.mrope_section)}
  hf["rope_parameters"] = hf["text_config"]["rope_parameters"] = rope
  return hf


def _hub_flat_layout(config: config_lib.Qwen25VLConfig) -> dict:
  """The published hub layout: text fields flat, `rope_scaling` at the top level, no text_config."""
  hf = config.to_hf_dict()
  hf.pop("text_config")
  hf["rope_scaling"] = {"type": "mrope", "mrope_section": list(config.text.mrope_section)}
  return hf


def test_transformers_reads_our_config_without_rope_warnings(tiny_config, tmp_path, transformers_log):
  directory = _write(tmp_path, tiny_config.to_hf_dict())
  hf = transformers.AutoConfig.from_pretrained(directory)
  assert hf.text_config.rope_parameters["mrope_section"] == list(tiny_config.text.mrope_section) == [2, 3, 3]
  assert not [r for r in transformers_log if ROPE_WARNING in r.getMessage()]


def test_the_old_layout_did_warn(tiny_config, tmp_path, transformers_log):
  # Shows the capture above sees the message: the layout written before is the one that triggers it.
  transformers.AutoConfig.from_pretrained(_write(tmp_path, _old_layout(tiny_config)))
  assert [r for r in transformers_log if ROPE_WARNING in r.getMessage() and "mrope_section" in r.getMessage()]


def test_config_round_trips_through_transformers(tiny_config, tmp_path):
  source, saved = tmp_path / "ours", tmp_path / "resaved"
  source.mkdir()
  transformers.AutoConfig.from_pretrained(_write(source, tiny_config.to_hf_dict())).save_pretrained(str(saved))
  with open(saved / "config.json") as f:
    back = config_lib.Qwen25VLConfig.from_hf_dict(json.load(f))
  assert back.text.mrope_section == (2, 3, 3)
  assert back == tiny_config


@pytest.mark.parametrize("layout", [lambda c: c.to_hf_dict(), _old_layout, _hub_flat_layout],
                         ids=["current", "old", "hub_flat"])
def test_from_hf_dict_reads_the_rope_of_every_layout(tiny_config, layout):
  config = config_lib.Qwen25VLConfig.from_hf_dict(layout(tiny_config))
  assert (config.text.mrope_section, config.text.rope_theta) == ((2, 3, 3), 10000.0)
  assert config == tiny_config


def test_a_nested_rope_dict_wins_over_a_stale_flat_one(tiny_config):
  hf = tiny_config.to_hf_dict()
  hf["rope_scaling"] = {"type": "mrope", "mrope_section": [16, 24, 24], "rope_theta": 1e6}
  config = config_lib.Qwen25VLConfig.from_hf_dict(hf)
  assert (config.text.mrope_section, config.text.rope_theta) == ((2, 3, 3), 10000.0)
