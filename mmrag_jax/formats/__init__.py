"""The two stages' completion formats, read back from text: pure string parsing, no model, no arrays.

    parse_stage1("<answer>yes</answer>", think="optional")  # Stage1Parse(label=1, malformed=frozenset(), ...)
    parse_stage2(completion, num_candidates=5, think="required")  # Stage2Parse: cited, answer, malformed

  tags.py    `<think>` / `<evidence>` / `<answer>` block scanning and the malformed-completion kinds
             (`Malformed`)
  parse.py   one completion per stage -> its label, cited evidence, answer and malformed kinds

Shared by the rewards (`mmrag_jax.rl.rewards`) and the recipe's prediction files (`mmrag_jax.recipe.stage2`);
imports nothing else of the package. The reference completions these formats are written in are built by
`mmrag_jax.processing.targets`.
"""

from mmrag_jax.formats.parse import Stage1Parse, Stage2Parse, parse_stage1, parse_stage2
from mmrag_jax.formats.tags import Malformed

__all__ = ["Malformed", "Stage1Parse", "Stage2Parse", "parse_stage1", "parse_stage2"]
