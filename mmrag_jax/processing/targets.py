"""Reference completions in the two stages' output formats, for the supervised format warm-up.

  stage1_target(label=1)                         -> "<answer>yes</answer>"
  stage2_target([2, 1], ["The roof is red."])    -> "<think>Candidates [2] and [1] are relevant to the
                                                     question.</think><evidence>[2], [1]</evidence>
                                                     <answer>The roof is red.</answer>"   (one line)

A target scores the maximum format reward and, given the gold labels it was built from, the maximum
relevance / ranking / answer rewards (tests/processing/test_targets.py checks this against the reward
kernels). The reasoning sentence is a fixed template: the warm-up teaches the format, GRPO the content.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["MMQA_ANSWER_SEPARATOR", "stage1_target", "stage2_target"]

MMQA_ANSWER_SEPARATOR = "; "  # as the stage-2 prompt asks: answers may hold commas ("Washington, D.C.", "1,000")


def stage1_target(label: int, think: bool = False) -> str:
  """The judgment for gold label 1 (relevant) or 0; with `think`, a one-sentence <think> block first."""
  if label not in (0, 1):
    raise ValueError(f"stage-1 targets need a gold label 0 or 1, got {label}")
  answer = "yes" if label else "no"
  prefix = f"<think>The candidate is {'relevant' if label else 'not relevant'} to the question.</think>" if think else ""
  return f"{prefix}<answer>{answer}</answer>"


def _cited_phrase(numbers: Sequence[int]) -> str:
  if not numbers:
    return "No candidate is relevant to the question."
  refs = [f"[{n}]" for n in numbers]
  if len(refs) == 1:
    return f"Candidate {refs[0]} is relevant to the question."
  return f"Candidates {', '.join(refs[:-1])} and {refs[-1]} are relevant to the question."


def stage2_target(gold_numbers: Sequence[int], answers: Sequence[str], dataset: str = "webqa") -> str:
  """Reasoning, evidence (the gold candidates' prompt numbers in the given order) and the answer.

  The answer is the first reference for WebQA (one sentence) and every reference joined with
  `MMQA_ANSWER_SEPARATOR` for MultimodalQA (a list answer).
  """
  numbers = [int(n) for n in gold_numbers]
  if dataset == "mmqa":
    answer = MMQA_ANSWER_SEPARATOR.join(str(a) for a in answers)
  else:
    answer = str(answers[0]) if answers else ""
  evidence = ", ".join(f"[{n}]" for n in numbers)
  return f"<think>{_cited_phrase(numbers)}</think><evidence>{evidence}</evidence><answer>{answer}</answer>"
