"""The TRL side of `benchmarks.versus_trl`: Hugging Face TRL's stock `GRPOTrainer` on the shared work, timed.

TRL (and torch) are imported only when a peer is built, so without them the benchmark can say how to
install them (`pip install -e '.[peer]'`) instead of failing on import.

Timed spans (TRL runs its own loop, `Trainer.train()`, with `max_steps` steps; nothing in it is replaced):
  step     `on_step_begin` -> `on_step_end` of a `TrainerCallback`: generation and scoring, the loss
           forward, backward, gradient clipping, AdamW, the scheduler step and `zero_grad`. Fetching the
           step's raw rows from the dataloader happens just before `on_step_begin` and is not timed.
  rollout  `GRPOTrainer._generate_and_score_completions` (wrapped on the instance): chat template and
           image processing, `generate` over B * G rows (each prompt repeated G times by TRL's sampler),
           decoding, rewards and group advantages, and a second processor call for the loss inputs.
  update   step - rollout.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import PIL.Image
import transformers
from transformers.processing_utils import ProcessorMixin

from mmrag_jax.model import Qwen25VLConfig
from mmrag_jax.processing import QwenVLProcessor

__all__ = ["INSTALL_HINT", "TrlPeer", "TrlStep", "trl_missing"]

INSTALL_HINT = "pip install -e '.[peer]'"


def trl_missing() -> str | None:
  """None when TRL imports, else a one-line message naming the install command."""
  try:
    import trl  # noqa: F401
  except ImportError as error:
    return (f"benchmarks.versus_trl needs Hugging Face TRL, which is not installed here ({error}). "
            f"Install the peer extra: {INSTALL_HINT}")
  return None


class _ImageOnlyQwenProcessor(transformers.Qwen2_5_VLProcessor):
  """transformers' Qwen2.5-VL processor without its video processor (which needs torchvision).

  `ProcessorMixin` takes its sub-processors from the `__init__` signature, so leaving `video_processor`
  out of it is what makes the processor image-only; everything else (chat template, `<|image_pad|>`
  expansion, `mm_token_type_ids`) is the stock class's.
  """

  def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
    self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
    self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
    self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
    ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)


def _image_only_processor(processor: QwenVLProcessor) -> _ImageOnlyQwenProcessor:
  """The TRL processing class built from our processor's own tokenizer, image processor and template."""
  return _ImageOnlyQwenProcessor(image_processor=processor.image_processor, tokenizer=processor.tokenizer,
                                 chat_template=processor.chat_template)


@dataclasses.dataclass
class TrlStep:
  """One TRL step: seconds of the spans in the module docstring, and what its rollout produced.

  prompt_ids [B * G, L] and completion_mask [B * G, T] as TRL built them (left-padded prompts).
  """

  step_s: float
  rollout_s: float
  prompt_ids: np.ndarray
  completion_mask: np.ndarray

  @property
  def update_s(self) -> float:
    return self.step_s - self.rollout_s


class TrlPeer:
  """TRL's GRPOTrainer on the checkpoint in `checkpoint_dir`, configured to the shared work.

  prompts: per prompt, (user text, its images); the user turn is `[image, ..., text]` on both sides.
  reward: completion text -> reward. after_step: called after each TRL step, outside the timed spans
  (the benchmark runs one of our steps there, so the two sides alternate).
  """

  def __init__(self, checkpoint_dir: str, processor: QwenVLProcessor, config: Qwen25VLConfig,
               prompts: Sequence[tuple[str, Sequence[PIL.Image.Image]]], *, group_size: int, new_tokens: int,
               steps: int, reward: Callable[[str], float], output_dir: str, seed: int = 0):
    import datasets
    import trl

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    self.steps: list[TrlStep] = []
    self.after_step: Callable[[], None] = lambda: None
    vision_ids = [config.image_token_id, config.video_token_id, config.vision_start_token_id,
                  config.vision_end_token_id]
    args = trl.GRPOConfig(
        output_dir=output_dir, use_cpu=True, bf16=False, seed=seed, max_steps=steps,
        per_device_train_batch_size=len(prompts) * group_size, gradient_accumulation_steps=1,
        num_generations=group_size, max_completion_length=new_tokens, shuffle_dataset=False,
        temperature=1.0, top_p=1.0, top_k=0, beta=0.0, loss_type="dapo", scale_rewards="group",
        epsilon=0.2, learning_rate=1e-5, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1.0,
        gradient_checkpointing=False, logging_steps=steps + 1, save_strategy="no", report_to="none",
        disable_tqdm=True, dataloader_num_workers=0,
        # Exactly new_tokens per completion (no EOS before then) and no vision placeholders, as on our side.
        generation_kwargs={"min_new_tokens": new_tokens, "suppress_tokens": vision_ids})
    dataset = datasets.Dataset.from_dict({
        "prompt": [[{"role": "user", "content": text}] for text, _ in prompts],
        "images": [list(images) for _, images in prompts]})

    def text_reward(completions: list[list[dict[str, str]]], **_: Any) -> list[float]:
      return [reward(completion[0]["content"]) for completion in completions]

    model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(checkpoint_dir, dtype="float32")
    self.trainer = trl.GRPOTrainer(model=model, reward_funcs=[text_reward], args=args, train_dataset=dataset,
                                   processing_class=_image_only_processor(processor),
                                   callbacks=[_StepClock(self)])
    for quiet in (transformers.trainer_callback.PrinterCallback, transformers.trainer_callback.ProgressCallback):
      self.trainer.remove_callback(quiet)
    self._rollout: dict[str, Any] = {}
    score = self.trainer._generate_and_score_completions

    def timed_rollout(inputs):
      start = time.perf_counter()
      out = score(inputs)
      self._rollout = {"rollout_s": time.perf_counter() - start, "prompt_ids": out["prompt_ids"].numpy(),
                       "completion_mask": out["completion_mask"].numpy()}
      return out

    self.trainer._generate_and_score_completions = timed_rollout

  def train(self) -> list[TrlStep]:
    """Runs TRL's loop (`max_steps` steps, `after_step` after each); returns the steps in order."""
    self.trainer.train()
    return self.steps


class _StepClock(transformers.TrainerCallback):
  """Times each optimizer step of TRL's loop and hands control to `peer.after_step` between steps."""

  def __init__(self, peer: TrlPeer):
    self.peer, self.began = peer, 0.0

  def on_step_begin(self, args, state, control, **kwargs):
    self.began = time.perf_counter()

  def on_step_end(self, args, state, control, **kwargs):
    step_s = time.perf_counter() - self.began
    self.peer.steps.append(TrlStep(step_s=step_s, **self.peer._rollout))
    self.peer.after_step()
