"""An offline, Qwen2.5-VL-shaped tokenizer and processor directory for tests and demos.

The hub is unreachable here, so tests cannot download the real Qwen tokenizer. This module trains a
small byte-level BPE (496 regular entries) on a built-in English corpus with the same pre-tokenizer
shape as Qwen2 (NFC, the Qwen split regex, byte-level bytes-to-unicode), then appends the Qwen special
tokens at the ids of `mmrag_jax.model.config.TINY_SPECIAL_IDS` (496..502), so the tiny model's
512-row embedding covers every id. The chat template mirrors the Qwen2.5-VL one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from mmrag_jax.model.config import TINY_SPECIAL_IDS

__all__ = ["NUM_REGULAR_TOKENS", "build_tiny_processor_dir", "build_tiny_tokenizer"]

NUM_REGULAR_TOKENS = 496

# Qwen2's split: contractions, letter runs (with one leading non-letter, e.g. " word" or "<think"),
# single digits, punctuation runs, newlines, whitespace.
_QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Same structure as the published Qwen2.5-VL template: a default system turn, `<|im_start|>role\n`
# ... `<|im_end|>\n` per message, one vision span per image, optional "Picture k: " labels.
_QWEN25VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}"
    "{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}{{ 'Picture ' + image_count.value|string + ': ' }}{% endif %}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'video' or 'video' in part %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}{{ 'Video ' + video_count.value|string + ': ' }}{% endif %}"
    "{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% elif 'text' in part %}"
    "{{ part['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Training text for the merges: the words our prompts and completions use most, so that tags,
# "yes"/"no" and common question words come out as one or a few tokens.
_CORPUS = (
    "<think>The image shows a red bridge over a river.</think><answer>yes</answer>",
    "<think>The caption is about a museum, not the question.</think><answer>no</answer>",
    "<think>Document [2] names the city and image [1] shows its tower.</think>"
    "<evidence>[2], [1]</evidence><answer>Paris</answer>",
    "<think>Both sources agree on the color of the flag.</think><evidence>[3]</evidence><answer>blue</answer>",
    "Is this document relevant to the question? Answer yes or no.",
    "Is this image relevant to the question? Answer yes or no.",
    "Question: What is the name of the building in the picture?",
    "Question: How many people are standing in front of the house?",
    "Question: Which animal is larger, the one in the first image or the one in the second?",
    "Question: When was the church built, and what is the main material of its walls?",
    "Question: Where is the statue located and who made it?",
    "Question: Who is the person shown on the left side of the photo?",
    "Candidates: read each numbered source and decide which ones answer the question.",
    "Title: A short history of the old harbour town and its lighthouse.",
    "Caption: A white cat sitting on a wooden table near the window.",
    "Caption: The mountain is covered with snow in the winter and green grass in the summer.",
    "Text: The river flows through the city from the north to the south and into the sea.",
    "Text: The team won the game in the last minute of the second half.",
    "You are a helpful assistant. Think about the question step by step, then give the answer.",
    "Put your reasoning in <think> tags, the evidence numbers in <evidence> tags, "
    "and the final answer in <answer> tags.",
    "The answer is yes. The answer is no. yes no yes no yes no yes no",
    "The first image and the second image both show the same tower from different sides.",
    "There are two dogs, three birds and one horse in the field behind the farm.",
    "The color of the car is red, the color of the door is green, the sky is blue.",
    "This document does not mention the year, so it is not relevant to the question.",
    "This image shows the front of the station, which is relevant to the question.",
    "The painting was made by an artist who lived in the city for many years.",
    "In the photo the woman is holding an umbrella while walking along the street.",
    "Most of the buildings in the old town are made of stone and have red roofs.",
    "The number of windows on the front of the house is larger than the number of doors.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 12 20 100 1999 2024.",
    "system\nuser\nassistant\nsystem\nuser\nassistant\nuser\nassistant\nuser\nassistant",
    "<answer>yes</answer><answer>no</answer><answer>yes</answer><answer>no</answer>",
    "<answer>yes</answer><answer>no</answer><answer>yes</answer><answer>no</answer>",
    "<think></think><evidence></evidence><think></think><evidence></evidence>",
    "<evidence>[1]</evidence> <evidence>[2], [3]</evidence> <evidence>[4], [1]</evidence>",
)


def _base_tokenizer() -> Tokenizer:
  tokenizer = Tokenizer(models.BPE())
  tokenizer.normalizer = normalizers.NFC()
  tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(_QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
      pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
  ])
  tokenizer.decoder = decoders.ByteLevel()
  return tokenizer


def build_tiny_tokenizer(out_dir: str | os.PathLike[str] | None = None,
                         extra_corpus: Sequence[str] = ()) -> PreTrainedTokenizerFast:
  """Trains the tiny Qwen-style tokenizer (deterministic) and saves it to `out_dir` when given.

  extra_corpus: more training text for the merges (e.g. a synthetic world's names), so that its words
  come out as few tokens; the vocabulary size and special ids do not change.

  Ids 0..495 are byte-level BPE entries (256 byte symbols + 240 merges); ids 496..502 are the Qwen
  special tokens of `TINY_SPECIAL_IDS`. eos is `<|im_end|>`, padding uses `<|endoftext|>`.
  """
  tokenizer = _base_tokenizer()
  trainer = trainers.BpeTrainer(
      vocab_size=NUM_REGULAR_TOKENS,
      min_frequency=1,
      show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      special_tokens=[],
  )
  tokenizer.train_from_iterator((*_CORPUS, *extra_corpus), trainer=trainer)
  if tokenizer.get_vocab_size() != NUM_REGULAR_TOKENS:
    raise RuntimeError(f"tiny BPE training produced {tokenizer.get_vocab_size()} entries, "
                       f"expected {NUM_REGULAR_TOKENS}: the built-in corpus is too small")

  specials = sorted(TINY_SPECIAL_IDS.items(), key=lambda kv: kv[1])
  tokenizer.add_special_tokens([AddedToken(text, special=True, normalized=False) for text, _ in specials])
  for text, expected_id in specials:
    if tokenizer.token_to_id(text) != expected_id:
      raise RuntimeError(f"special token {text!r} landed at id {tokenizer.token_to_id(text)}, "
                         f"expected {expected_id}")

  wrapped = PreTrainedTokenizerFast(
      tokenizer_object=tokenizer,
      eos_token="<|im_end|>",
      pad_token="<|endoftext|>",
      model_max_length=32768,
      clean_up_tokenization_spaces=False,
  )
  wrapped.chat_template = _QWEN25VL_CHAT_TEMPLATE
  if out_dir is not None:
    wrapped.save_pretrained(os.fspath(out_dir))
  return wrapped


# The published Qwen2.5-VL preprocessor_config.json values (its pixel budget is deliberately not the
# one we use: `load_processor` must override it from our config).
_PREPROCESSOR_CONFIG = {
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2_5_VLProcessor",
    "do_convert_rgb": True,
    "do_resize": True,
    "do_rescale": True,
    "do_normalize": True,
    "resample": 3,
    "rescale_factor": 1 / 255,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
}


def build_tiny_processor_dir(out_dir: str | os.PathLike[str], extra_corpus: Sequence[str] = ()) -> str:
  """Writes a checkpoint-like processor directory: tokenizer files, `preprocessor_config.json` and
  `chat_template.json`, loadable with `mmrag_jax.processing.load_processor`. Returns the path.
  extra_corpus: see `build_tiny_tokenizer`."""
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  build_tiny_tokenizer(out_dir, extra_corpus)
  with open(os.path.join(out_dir, "preprocessor_config.json"), "w") as f:
    json.dump(_PREPROCESSOR_CONFIG, f, indent=2)
  with open(os.path.join(out_dir, "chat_template.json"), "w") as f:
    json.dump({"chat_template": _QWEN25VL_CHAT_TEMPLATE}, f, indent=2)
  return out_dir
