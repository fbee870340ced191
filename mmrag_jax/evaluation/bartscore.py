"""WebQA fluency (QA-FL): BARTScore of the answer against the reference answers.

score(src -> tgt) is the mean per-token log-likelihood (nats / token, all target tokens including
<s> and </s>) of `tgt` under a BART model conditioned on `src` (Yuan et al., 2021). The WebQA
benchmark uses `facebook/bart-large-cnn` with the ParaBank-finetuned weights `bart.pth`, and for a
candidate c and references a_1..a_m:

  FL(c) = min(1, max_i exp(score(a_i -> c)) / exp(score(a_i -> a_i)))

after removing ASCII punctuation and collapsing whitespace in every string. A candidate equal to a
reference (up to that normalization) scores exactly 1.

torch and the checkpoint are optional: nothing here is imported by the rest of the metrics, and the
evaluation reports FL and QA as unavailable when no checkpoint is given.
"""

from __future__ import annotations

import os
import string
from collections.abc import Sequence

import numpy as np
import tqdm

__all__ = ["BartScorer", "PARABANK_WEIGHTS_FILE", "normalize_for_bart"]

_DROP_PUNCTUATION = str.maketrans(dict.fromkeys(string.punctuation))
PARABANK_WEIGHTS_FILE = "bart.pth"


def normalize_for_bart(text: str) -> str:
  """Light normalization applied before BARTScore: ASCII punctuation removed, whitespace collapsed."""
  return " ".join(text.translate(_DROP_PUNCTUATION).split())


class BartScorer:
  """BARTScore with a local transformers BART checkpoint (torch).

  Args:
    checkpoint: directory holding a BartForConditionalGeneration checkpoint and its tokenizer
      (e.g. a local copy of facebook/bart-large-cnn).
    weights: optional torch state dict (the ParaBank `bart.pth`) loaded over the checkpoint.
    device: torch device string, e.g. "cpu" or "cuda:0".
    batch_size: pairs per forward pass; the scores do not depend on it.
    max_length: source and target truncation length in tokens.
    progress: show a progress bar over batches (a full split on CPU takes minutes).
  """

  def __init__(self, checkpoint: str | os.PathLike[str], weights: str | os.PathLike[str] | None = None,
               device: str = "cpu", batch_size: int = 16, max_length: int = 1024, progress: bool = False):
    try:
      import torch
      from transformers import AutoTokenizer, BartForConditionalGeneration
    except ImportError as error:
      raise ImportError("QA-FL needs torch and transformers (pip install torch)") from error
    checkpoint = os.fspath(checkpoint)
    if not os.path.isdir(checkpoint):
      raise FileNotFoundError(f"BART checkpoint directory not found: {checkpoint}")
    self._torch = torch
    self.checkpoint = checkpoint
    self.weights = None if weights is None else os.fspath(weights)
    self.device = device
    self.batch_size = batch_size
    self.max_length = max_length
    self.progress = progress
    self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    self.model = BartForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32)
    if self.weights is not None:
      self._load_weights(self.weights)
    self.model.to(device).eval()

  def _load_weights(self, path: str) -> None:
    if not os.path.isfile(path):
      raise FileNotFoundError(f"BART weights file not found: {path}")
    state = self._torch.load(path, map_location="cpu", weights_only=True)
    result = self.model.load_state_dict(state, strict=False)
    # Older checkpoints may omit the copies of the shared embedding; anything else is a wrong file.
    tied = {"model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight"}
    missing = [key for key in result.missing_keys if key not in tied]
    if missing or result.unexpected_keys:
      raise ValueError(f"{path} does not match the checkpoint {self.checkpoint}: missing keys {missing[:5]}, "
                       f"unexpected keys {result.unexpected_keys[:5]}")

  def _score_batch(self, sources: list[str], targets: list[str]) -> np.ndarray:
    torch = self._torch
    encode = lambda texts: self.tokenizer(texts, max_length=self.max_length, truncation=True, padding=True,
                                          return_tensors="pt")
    source = encode(sources)
    target = encode(targets)
    labels = target["input_ids"].to(self.device)  # [B, T]
    target_mask = target["attention_mask"].to(self.device)  # [B, T]
    # Teacher forcing: the decoder reads the targets shifted right behind the start token.
    decoder_inputs = torch.full_like(labels, self.model.config.pad_token_id)
    decoder_inputs[:, 0] = self.model.config.decoder_start_token_id
    decoder_inputs[:, 1:] = labels[:, :-1]
    logits = self.model(input_ids=source["input_ids"].to(self.device),
                        attention_mask=source["attention_mask"].to(self.device),
                        decoder_input_ids=decoder_inputs).logits  # [B, T, V]
    token_log_probs = torch.log_softmax(logits.float(), dim=-1).gather(-1, labels[..., None])[..., 0]
    mean = (token_log_probs * target_mask).sum(dim=1) / target_mask.sum(dim=1)
    return mean.double().cpu().numpy()

  def score(self, sources: Sequence[str], targets: Sequence[str]) -> np.ndarray:
    """Mean log-likelihood per target token, [N] float64 in nats, of targets[i] given sources[i]."""
    if len(sources) != len(targets):
      raise ValueError(f"{len(sources)} sources but {len(targets)} targets")
    scores = np.zeros([len(sources)], np.float64)
    # Similar lengths share a batch so that little compute goes to padding.
    order = sorted(range(len(sources)), key=lambda i: (len(sources[i]) + len(targets[i])))
    starts = range(0, len(order), self.batch_size)
    with self._torch.inference_mode():
      for start in tqdm.tqdm(starts, desc="BARTScore", unit="batch", disable=not self.progress):
        chunk = order[start:start + self.batch_size]
        scores[chunk] = self._score_batch([sources[i] for i in chunk], [targets[i] for i in chunk])
    return scores

  def fluency(self, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
    """QA-FL per question, [N] in [0, 1]: reference-normalized BARTScore, best reference, capped at 1.

    candidates[i] is the answer to question i, references[i] its non-empty list of answer sentences.
    """
    if len(candidates) != len(references):
      raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists")
    for index, refs in enumerate(references):
      if not refs:
        raise ValueError(f"question {index} has no reference answer to score fluency against")
    candidates = [normalize_for_bart(c) for c in candidates]
    references = [[normalize_for_bart(a) for a in refs] for refs in references]
    sources = [a for refs in references for a in refs]
    targets = [c for c, refs in zip(candidates, references) for _ in refs]
    unique_refs = sorted(set(sources))
    self_scores = dict(zip(unique_refs, self.score(unique_refs, unique_refs)))
    log_ratios = self.score(sources, targets) - np.array([self_scores[a] for a in sources])
    fluency = np.zeros([len(candidates)], np.float64)
    start = 0
    for index, refs in enumerate(references):
      best = float(np.max(np.exp(log_ratios[start:start + len(refs)])))
      fluency[index] = min(1.0, best)
      start += len(refs)
    return fluency
