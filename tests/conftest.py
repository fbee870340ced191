"""Session-wide test setup: 8 emulated CPU devices, exact float32 matmuls, no hub access, and jax on the
CPU even where libtpu is installed (the planner tests compile for TPU topologies without opening a chip).

These must be set before jax initialises its backend, hence at import time of the root conftest.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
