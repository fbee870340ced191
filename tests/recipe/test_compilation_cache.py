"""The CLI's persistent compilation cache (`config.compilation_cache`): a program compiled by one process
lands in WORKDIR/jax_cache and the next process in that workdir loads it instead of compiling; off, nothing
is written. Each side is its own process, as jax decides once per process whether it caches."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]

PROCESS = """
import json, sys
import jax, jax.numpy as jnp
from ml_collections import ConfigDict
from mmrag_jax.main import use_compilation_cache

events = []
jax.monitoring.register_event_listener(lambda event, **kwargs: events.append(event))
use_compilation_cache(ConfigDict({"compilation_cache": sys.argv[2] == "on"}), sys.argv[1])
value = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())(jnp.arange(12.0).reshape(3, 4))
print(json.dumps({"value": float(value), "hits": events.count("/jax/compilation_cache/cache_hits")}))
"""


def _run(workdir: pathlib.Path, cache: str) -> dict:
  done = subprocess.run([sys.executable, "-c", PROCESS, str(workdir), cache], cwd=REPO, capture_output=True,
                        text=True, timeout=120, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_second_process_loads_the_first_ones_programs(tmp_path):
  first = _run(tmp_path, "on")
  entries = list((tmp_path / "jax_cache").iterdir())
  assert first["hits"] == 0 and entries
  second = _run(tmp_path, "on")
  assert second["hits"] >= 1 and second["value"] == first["value"]
  assert sorted(p.name for p in (tmp_path / "jax_cache").iterdir()) == sorted(p.name for p in entries)


def test_off_writes_no_cache(tmp_path):
  assert _run(tmp_path, "off")["hits"] == 0
  assert not (tmp_path / "jax_cache").exists()
