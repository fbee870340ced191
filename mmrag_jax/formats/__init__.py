"""The two stages' completion formats, read back from text: pure string parsing, no model, no arrays.

  tags.py    `<think>` / `<evidence>` / `<answer>` block scanning and the malformed-completion kinds
  parse.py   one completion per stage -> its label, cited evidence, answer and malformed kinds

Shared by the rewards (`mmrag_jax.rl.rewards`) and the recipe's prediction files (`mmrag_jax.recipe.stage2`);
imports nothing else of the package. The reference completions these formats are written in are built by
`mmrag_jax.processing.targets`.
"""
