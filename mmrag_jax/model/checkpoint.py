"""Hugging Face safetensors checkpoints <-> the Flax `Qwen25VL`.

    model = load_pretrained("/ckpt/Qwen2.5-VL-3B-Instruct", param_dtype="bfloat16", mesh=mesh)
    save_pretrained(model, "/out/policy", dtype="bfloat16")  # transformers / vLLM can serve it

Loading is strict: every checkpoint tensor is consumed exactly once and every parameter is found, with
the expected shape; anything else raises `CheckpointError` naming the key. Tensors are read one
parameter at a time into host memory (a parameter stacked over layers gathers its `model.layers.{i}` or
`visual.blocks.{i}` tensors first) and put straight onto their final sharding, so the model is never
whole on one device or on the host.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from safetensors import safe_open
from safetensors.flax import save_file

from mmrag_jax.model.config import Qwen25VLConfig, VisionConfig
from mmrag_jax.model.hf_keys import HFParam, Path, canonical_key, model_params, to_flax, to_torch, torch_shape
from mmrag_jax.model.qwen25vl import Qwen25VL, abstract_model
from mmrag_jax.model.vision_index import max_frame_patches
from mmrag_jax.parallel import DEFAULT_RULES, LogicalRules, param_shardings

__all__ = ["CONFIG_FILE", "CheckpointError", "TensorReader", "assign_hf_tensors", "load_pretrained", "save_pretrained"]

CONFIG_FILE = "config.json"
_SINGLE_FILE = "model.safetensors"
_INDEX_FILE = "model.safetensors.index.json"
_DEFAULT_MAX_SHARD_BYTES = 5 * 10**9


class CheckpointError(ValueError):
  """A checkpoint does not match the model: missing, unexpected, duplicated or mis-shaped tensors."""


def _host_device() -> jax.Device | None:
  try:
    return jax.local_devices(backend="cpu")[0]
  except RuntimeError:
    return None


class TensorReader:
  """Read access to the tensors of a safetensors checkpoint (single file or sharded with an index).

  Keys are exposed in the published layout (`canonical_key`); tensors come back as host numpy arrays
  (bf16 through ml_dtypes), read lazily one at a time.
  """

  def __init__(self, path: str, stack: contextlib.ExitStack):
    index_path, single_path = os.path.join(path, _INDEX_FILE), os.path.join(path, _SINGLE_FILE)
    if os.path.exists(index_path):
      with open(index_path) as f:
        weight_map = json.load(f).get("weight_map")
      if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index_path} has no 'weight_map' dict")
      files = sorted(set(weight_map.values()))
    elif os.path.exists(single_path):
      files, weight_map = [_SINGLE_FILE], None
    else:
      raise CheckpointError(f"no {_SINGLE_FILE} or {_INDEX_FILE} in {path}")
    self._handles = {}
    for name in files:
      file_path = os.path.join(path, name)
      if not os.path.exists(file_path):
        raise CheckpointError(f"{_INDEX_FILE} in {path} refers to missing file {name}")
      # The flax reader understands bf16 on every safetensors version; keep its arrays on the host.
      self._handles[name] = stack.enter_context(safe_open(file_path, framework="flax"))
    self._where: dict[str, tuple[str, str]] = {}
    for name, handle in self._handles.items():
      for raw in handle.keys():
        if weight_map is not None and weight_map.get(raw) != name:
          raise CheckpointError(f"tensor {raw!r} is in {name} but {_INDEX_FILE} places it in {weight_map.get(raw)}")
        key = canonical_key(raw)
        if key in self._where:
          raise CheckpointError(f"checkpoint holds {key!r} twice (as {self._where[key][1]!r} and {raw!r})")
        self._where[key] = (name, raw)
    if weight_map is not None:
      unread = set(weight_map) - {raw for _, raw in self._where.values()}
      if unread:
        raise CheckpointError(f"{_INDEX_FILE} lists tensors absent from their files: {sorted(unread)[:5]}")

  def keys(self) -> set[str]:
    return set(self._where)

  def shape(self, key: str) -> tuple[int, ...]:
    name, raw = self._where[key]
    return tuple(self._handles[name].get_slice(raw).get_shape())

  def read(self, key: str) -> np.ndarray:
    name, raw = self._where[key]
    device = _host_device()
    with jax.default_device(device) if device is not None else contextlib.nullcontext():
      return np.asarray(self._handles[name].get_tensor(raw))


@contextlib.contextmanager
def _open_checkpoint(path: str) -> Iterator[TensorReader]:
  """`TensorReader` over the safetensors files of checkpoint directory `path`, closed on exit."""
  with contextlib.ExitStack() as stack:
    yield TensorReader(path, stack)


def _check_keys(table: list[HFParam], available: set[str], tied_head: bool) -> set[str]:
  """Raises on missing / unexpected keys; returns keys to consume besides the table (a tied head copy)."""
  expected = {p.key for p in table}
  extra = set()
  if tied_head and "lm_head.weight" in available:
    extra.add("lm_head.weight")  # some exports store the tied head too; checked equal to the embedding
  unexpected = sorted(available - expected - extra)
  if unexpected:
    raise CheckpointError(f"unexpected key {unexpected[0]!r} in checkpoint (not a parameter of this model); "
                          f"{len(unexpected)} unexpected in all: {unexpected[:8]}")
  missing = sorted(expected - available)
  if missing:
    raise CheckpointError(f"missing key {missing[0]!r} in checkpoint; {len(missing)} missing in all: {missing[:8]}")
  return extra


def assign_hf_tensors(state: nnx.State, tensors: "TensorReader | Mapping[str, Any]", table: list[HFParam], *,
                      vision_config: VisionConfig, shardings: nnx.State | None = None,
                      tied_head: bool = False) -> nnx.State:
  """`state` (abstract or concrete) with every parameter of `table` replaced by its checkpoint tensor.

  tensors: a `TensorReader`, or a mapping {key: array} in the published key layout (e.g. a torch
  state dict converted to numpy). Each table key must be present exactly once with the checkpoint
  shape; values are cast to the parameter's dtype and put on its sharding from `shardings` (a state
  of NamedShardings, see `mmrag_jax.parallel.param_shardings`), else on the default device.
  """
  reader = tensors if isinstance(tensors, TensorReader) else _MappingReader(tensors)
  extra = _check_keys(table, reader.keys(), tied_head)
  flat = dict(nnx.to_flat_state(state))
  flat_shardings = dict(nnx.to_flat_state(shardings)) if shardings is not None else {}
  table_paths = {p.path for p in table}
  uncovered = sorted(str(path) for path in flat if path not in table_paths)
  if uncovered:
    raise CheckpointError(f"model parameters without a checkpoint key: {uncovered[:8]}")
  by_path: dict[Path, list[HFParam]] = {}
  for param in table:
    by_path.setdefault(param.path, []).append(param)
  for path, params in by_path.items():
    variable = flat.get(path)
    if variable is None:
      raise CheckpointError(f"key {params[0].key!r} maps to {path}, which is not a parameter of the model")
    target = variable.get_value()

    def read(param: HFParam) -> np.ndarray:
      want = torch_shape(param, tuple(target.shape), vision_config)
      got = reader.shape(param.key)
      if got != want:
        raise CheckpointError(f"wrong shape for key {param.key!r}: checkpoint has {got}, the model needs {want}")
      return to_flax(reader.read(param.key), param.kind).astype(target.dtype)

    if params[0].layer is None:
      value = read(params[0])
    else:  # a stacked parameter: its layers' tensors are assembled on the host, one parameter at a time
      layers = sorted(p.layer for p in params)
      if layers != list(range(target.shape[0])):
        raise CheckpointError(f"{path} stacks {target.shape[0]} layers but the key table covers layers {layers}")
      value = np.empty(target.shape, target.dtype)
      for param in params:
        value[param.layer] = read(param)
    sharding = flat_shardings[path].get_value() if path in flat_shardings else None
    flat[path] = variable.replace(jax.device_put(value, sharding))
  for key in extra:
    embedding = reader.read("model.embed_tokens.weight")
    if reader.shape(key) != embedding.shape or not np.array_equal(reader.read(key), embedding):
      raise CheckpointError(f"unexpected key {key!r}: the head is tied to the embedding but this tensor differs")
  return nnx.from_flat_state(list(flat.items()))


class _MappingReader:
  """The `TensorReader` interface over an in-memory {key: array} mapping."""

  def __init__(self, tensors: Mapping[str, Any]):
    self._tensors = {}
    for raw, value in tensors.items():
      key = canonical_key(raw)
      if key in self._tensors:
        raise CheckpointError(f"tensors hold {key!r} twice (raw key {raw!r})")
      self._tensors[key] = value

  def keys(self) -> set[str]:
    return set(self._tensors)

  def shape(self, key: str) -> tuple[int, ...]:
    return tuple(self._tensors[key].shape)

  def read(self, key: str) -> np.ndarray:
    return np.asarray(self._tensors[key])


def _checkpoint_dtype(hf: Mapping[str, Any]) -> str:
  dtype = hf.get("dtype") or hf.get("torch_dtype") or "float32"
  return str(dtype).removeprefix("torch.")


def load_pretrained(path: str, *, dtype: str | None = None, param_dtype: str | None = None,
                    mesh: jax.sharding.Mesh | None = None, rules: LogicalRules | None = None,
                    remat: bool = False, max_pixels: int | None = None,
                    attention_query_chunk: int | None = None) -> Qwen25VL:
  """Loads a Hugging Face Qwen2.5-VL checkpoint directory (config.json + safetensors) as `Qwen25VL`.

  param_dtype: storage dtype (default: the checkpoint's `dtype` / `torch_dtype`); dtype: compute dtype
  (default: param_dtype). With `mesh`, each parameter goes straight onto the NamedSharding that its
  logical axes get under `rules` (default `mmrag_jax.parallel.DEFAULT_RULES`). remat: recompute each
  layer's activations in the backward pass (`Qwen25VLConfig.remat`). max_pixels: the largest image the
  input pipeline sends; it sizes the vision tower's full-attention frame blocks
  (`Qwen25VLConfig.frame_block_size`; None = one block of all pixel rows). attention_query_chunk: queries
  per chunk of the text attention (`Qwen25VLConfig.attention_query_chunk`; None = unchunked).
  """
  config_path = os.path.join(path, CONFIG_FILE)
  if not os.path.exists(config_path):
    raise CheckpointError(f"no {CONFIG_FILE} in {path}")
  with open(config_path) as f:
    hf = json.load(f)
  param_dtype = param_dtype or _checkpoint_dtype(hf)
  config = Qwen25VLConfig.from_hf_dict(hf, param_dtype=param_dtype, dtype=dtype or param_dtype, remat=remat,
                                       attention_query_chunk=attention_query_chunk or None)
  if max_pixels is not None:
    config = config.replace(frame_block_size=max_frame_patches(max_pixels, config.vision))
  abstract = abstract_model(config)
  graphdef, abstract_state = nnx.split(abstract)
  shardings = None
  if mesh is not None:
    shardings = param_shardings(abstract_state, mesh, DEFAULT_RULES if rules is None else rules)
  with _open_checkpoint(path) as reader:
    state = assign_hf_tensors(abstract_state, reader, model_params(config), vision_config=config.vision,
                              shardings=shardings, tied_head=config.text.tie_word_embeddings)
  return nnx.merge(graphdef, state)


def _to_host(array: jax.Array) -> np.ndarray:
  if isinstance(array, jax.Array) and not array.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))
  return np.asarray(jax.device_get(array))


def save_pretrained(model: Qwen25VL, path: str, *, dtype: str | None = None,
                    max_shard_bytes: int = _DEFAULT_MAX_SHARD_BYTES) -> None:
  """Writes `model` as a Hugging Face checkpoint: config.json + safetensors in the published key layout.

  dtype: tensor dtype on disk (default: the model's param dtype). Above `max_shard_bytes` the tensors
  are split into `model-0000i-of-0000n.safetensors` files with a `model.safetensors.index.json`.
  Every process must call this (sharded arrays are gathered collectively); process 0 writes.
  """
  config: Qwen25VLConfig = model.config
  out_dtype = jnp.dtype(dtype or config.param_dtype)
  table = model_params(config)
  flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  missing = [p.key for p in table if p.path not in flat]
  if missing:
    raise CheckpointError(f"model has no parameter for key {missing[0]!r}")

  shards: list[list[HFParam]] = [[]]
  shard_bytes = 0
  for param in table:
    size = int(np.prod(torch_shape(param, flat[param.path].get_value().shape, config.vision))) * out_dtype.itemsize
    if shards[-1] and shard_bytes + size > max_shard_bytes:
      shards.append([])
      shard_bytes = 0
    shards[-1].append(param)
    shard_bytes += size

  writer = jax.process_index() == 0
  if writer:
    os.makedirs(path, exist_ok=True)
  names = [_SINGLE_FILE] if len(shards) == 1 else [
      f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
  weight_map, total = {}, 0
  host = _host_device()
  for name, shard in zip(names, shards):
    tensors = {}
    for param in shard:
      stored = flat[param.path].get_value()
      value = _to_host(param.part(stored))  # a stacked parameter: one layer's slice
      value = to_torch(value, param.kind, torch_shape(param, stored.shape, config.vision)).astype(out_dtype)
      tensors[param.key] = jax.device_put(np.ascontiguousarray(value), host)
      weight_map[param.key] = name
      total += value.nbytes
    if writer:
      save_file(tensors, os.path.join(path, name), metadata={"format": "pt"})
  if not writer:
    return
  if len(shards) > 1:
    with open(os.path.join(path, _INDEX_FILE), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
  hf = config.to_hf_dict()
  hf["torch_dtype"] = hf["dtype"] = out_dtype.name
  with open(os.path.join(path, CONFIG_FILE), "w") as f:
    json.dump(hf, f, indent=2)
