"""Qwen2.5-VL text + image processing without torchvision.

transformers' `Qwen2_5_VLProcessor` insists on a video processor, which needs torchvision (not
installable here), so this module combines the checkpoint's tokenizer with transformers' PIL image
processor (`Qwen2VLImageProcessorPil`) and does the `<|image_pad|>` expansion itself. The output has
the keys and values of the transformers processor, as numpy arrays.

The pixel budget (min/max pixels) always comes from our config, never from the checkpoint's
`preprocessor_config.json`: published files allow 12.8 M pixels per image, far too many for
multi-image RAG prompts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil, smart_resize

__all__ = ["QwenVLProcessor", "load_processor"]

_IMAGE_PAD_TOKEN = "<|image_pad|>"
# Values of `mm_token_type_ids`, as transformers defines them (2 would be a video token).
_MM_TYPE_TEXT, _MM_TYPE_IMAGE = 0, 1


class QwenVLProcessor:
  """Tokenizer + image processor for Qwen2.5-VL prompts.

  Attributes:
    tokenizer: the checkpoint's tokenizer (`AutoTokenizer`).
    image_processor: transformers' `Qwen2VLImageProcessorPil` with our pixel budget.
    chat_template: the jinja chat template (processor-level file first, else the tokenizer's).
    image_token_id, pad_token_id, eos_token_id: token ids used by the model and sampler.
  """

  def __init__(self, tokenizer: PreTrainedTokenizerBase, image_processor: Qwen2VLImageProcessorPil,
               chat_template: str | None = None):
    self.tokenizer = tokenizer
    self.image_processor = image_processor
    self.chat_template = chat_template or tokenizer.chat_template
    if not self.chat_template:
      raise ValueError("no chat template: neither chat_template.{jinja,json} nor the tokenizer defines one")
    self.image_token = getattr(tokenizer, "image_token", None) or _IMAGE_PAD_TOKEN
    self.image_token_id = _required_token_id(tokenizer, self.image_token)
    self.pad_token_id = _required_token_id(tokenizer, tokenizer.pad_token or "<|endoftext|>")
    self.eos_token_id = _required_token_id(tokenizer, tokenizer.eos_token or "<|im_end|>")
    self.merge_size = int(image_processor.merge_size)
    self.patch_size = int(image_processor.patch_size)

  @property
  def min_pixels(self) -> int:
    return int(self.image_processor.size["shortest_edge"])

  @property
  def max_pixels(self) -> int:
    return int(self.image_processor.size["longest_edge"])

  # -- text ----------------------------------------------------------------------------------------

  def apply_chat_template(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True,
                          **template_kwargs: Any) -> str:
    """Renders one conversation (HF message format) to the prompt string.

    messages: [{"role": "system"|"user"|"assistant", "content": str | [{"type": "image"} |
    {"type": "text", "text": ...}]}]. Each image becomes `<|vision_start|><|image_pad|><|vision_end|>`
    (one pad; `__call__` expands it). Extra keyword arguments reach the template (`add_vision_id`).
    """
    return self.tokenizer.apply_chat_template(
        list(messages), chat_template=self.chat_template, tokenize=False,
        add_generation_prompt=add_generation_prompt, **template_kwargs)

  def decode(self, token_ids: Sequence[int] | np.ndarray, skip_special_tokens: bool = False) -> str:
    """Token ids [L] -> text (special tokens kept unless `skip_special_tokens`)."""
    return self.tokenizer.decode(np.asarray(token_ids).tolist(), skip_special_tokens=skip_special_tokens)

  # -- images --------------------------------------------------------------------------------------

  def resized_size(self, height: int, width: int) -> tuple[int, int]:
    """(height, width) in pixels an image of this size is resized to under our pixel budget."""
    factor = self.patch_size * self.merge_size
    return smart_resize(height, width, factor=factor, min_pixels=self.min_pixels, max_pixels=self.max_pixels)

  def num_image_tokens(self, height: int, width: int) -> int:
    """Language-model tokens (`<|image_pad|>` copies) for an image of `height` x `width` pixels."""
    resized_h, resized_w = self.resized_size(height, width)
    token_side = self.patch_size * self.merge_size
    return (resized_h // token_side) * (resized_w // token_side)

  def process_images(self, images: Sequence[PIL.Image.Image]) -> tuple[np.ndarray, np.ndarray]:
    """Images -> (pixel_values [N_patches, 1176] float32, image_grid_thw [N_img, 3] int32).

    Rows of all images are concatenated in input order; every 4 consecutive rows form one 2x2 merge
    block. Zero images give arrays of shape [0, 1176] and [0, 3].
    """
    if not images:
      patch_dim = 3 * int(self.image_processor.temporal_patch_size) * self.patch_size**2
      return np.zeros((0, patch_dim), np.float32), np.zeros((0, 3), np.int32)
    for i, image in enumerate(images):
      if not isinstance(image, PIL.Image.Image):
        raise TypeError(f"images[{i}] is a {type(image).__name__}, expected a PIL.Image.Image")
    out = self.image_processor(list(images), return_tensors="np")
    return np.asarray(out["pixel_values"], np.float32), np.asarray(out["image_grid_thw"], np.int32)

  # -- batches -------------------------------------------------------------------------------------

  def __call__(self, texts: Sequence[str], images: Sequence[Sequence[PIL.Image.Image]] | None = None,
               padding_side: str = "left") -> dict[str, np.ndarray]:
    """Tokenizes a batch of prompts with their images.

    texts: B prompt strings, each holding one `<|image_pad|>` per image (as the chat template writes).
    images: per prompt, its images in the order of its pads (None: text only).

    Returns (the keys of the transformers Qwen2.5-VL processor):
      input_ids [B, L] int32, padded with the pad id on `padding_side`;
      attention_mask [B, L] int32 (1 = real token);
      mm_token_type_ids [B, L] int32 (1 where the token is an image pad, else 0);
      and, when any image is given, pixel_values [N_patches, 1176] float32 (images in row-major
      (batch, position) order) and image_grid_thw [N_img, 3] int32 (t, h, w in patches).
    Each `<|image_pad|>` is expanded to t*h*w/4 copies.
    """
    if isinstance(texts, str):
      raise TypeError("texts must be a list of strings, got a single str")
    if padding_side not in ("left", "right"):
      raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if images is not None and len(images) != len(texts):
      raise ValueError(f"got {len(texts)} texts but {len(images)} image lists")
    per_text_images = [list(sample) for sample in images] if images is not None else [[] for _ in texts]

    flat_images = [image for sample in per_text_images for image in sample]
    pixel_values, grid_thw = self.process_images(flat_images)
    tokens_per_image = (np.prod(grid_thw, axis=-1) // self.merge_size**2).tolist()

    expanded, next_image = [], 0
    for i, (text, sample_images) in enumerate(zip(texts, per_text_images)):
      pieces = text.split(self.image_token)
      if len(pieces) - 1 != len(sample_images):
        raise ValueError(f"texts[{i}] has {len(pieces) - 1} {self.image_token} placeholders but "
                         f"{len(sample_images)} images were given for it")
      out = [pieces[0]]
      for piece in pieces[1:]:
        out.append(self.image_token * tokens_per_image[next_image])
        out.append(piece)
        next_image += 1
      expanded.append("".join(out))

    encoded = self.tokenizer(expanded, padding="longest", padding_side=padding_side, return_tensors="np")
    input_ids = np.asarray(encoded["input_ids"], np.int32)
    batch = {
        "input_ids": input_ids,
        "attention_mask": np.asarray(encoded["attention_mask"], np.int32),
        "mm_token_type_ids": np.where(input_ids == self.image_token_id, _MM_TYPE_IMAGE, _MM_TYPE_TEXT)
                             .astype(np.int32),
    }
    n_pads, expected = int(batch["mm_token_type_ids"].sum()), int(sum(tokens_per_image))
    if n_pads != expected:
      raise ValueError(f"tokenized batch holds {n_pads} {self.image_token} tokens, expected {expected} "
                       f"(does the tokenizer treat {self.image_token} as one special token?)")
    if flat_images:
      batch["pixel_values"] = pixel_values
      batch["image_grid_thw"] = grid_thw
    return batch


def _required_token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
  token_id = tokenizer.convert_tokens_to_ids(token)
  if token_id is None or token_id == tokenizer.unk_token_id:
    raise ValueError(f"the tokenizer has no token {token!r}: not a Qwen2.5-VL tokenizer")
  return int(token_id)


def _read_chat_template(path: str) -> str | None:
  """The processor-level chat template of a checkpoint directory, if it ships one."""
  jinja_path = os.path.join(path, "chat_template.jinja")
  if os.path.isfile(jinja_path):
    with open(jinja_path) as f:
      return f.read()
  json_path = os.path.join(path, "chat_template.json")
  if os.path.isfile(json_path):
    with open(json_path) as f:
      data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get("chat_template"), str):
      raise ValueError(f"{json_path}: expected an object with a string 'chat_template'")
    return data["chat_template"]
  return None


def load_processor(path: str | os.PathLike[str], *, min_pixels: int, max_pixels: int) -> QwenVLProcessor:
  """Loads the processor of a local Qwen2.5-VL checkpoint directory.

  path: a directory with tokenizer files and `preprocessor_config.json` (as published or as
  `build_tiny_processor_dir` writes). min_pixels / max_pixels: our per-image pixel budget; it
  overrides whatever the directory's `preprocessor_config.json` says.
  """
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"processor directory {path!r} does not exist")
  if not 0 < min_pixels <= max_pixels:
    raise ValueError(f"need 0 < min_pixels <= max_pixels, got min_pixels={min_pixels}, max_pixels={max_pixels}")
  if not os.path.isfile(os.path.join(path, "preprocessor_config.json")):
    raise FileNotFoundError(f"{path!r} has no preprocessor_config.json")
  tokenizer = AutoTokenizer.from_pretrained(path)
  image_processor = Qwen2VLImageProcessorPil.from_pretrained(path, min_pixels=min_pixels, max_pixels=max_pixels)
  if (image_processor.size["shortest_edge"], image_processor.size["longest_edge"]) != (min_pixels, max_pixels):
    raise RuntimeError(f"image processor ignored the pixel budget: size={dict(image_processor.size)}")
  return QwenVLProcessor(tokenizer, image_processor, chat_template=_read_chat_template(path))
