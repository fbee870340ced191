"""Training checkpoints with orbax: params, optimizer state, KL reference, RNG, loop step, data position.

One checkpoint directory per loop step (`<workdir>/checkpoints/<step>/`):

  state/          params + optimizer state (+ the KL reference policy when beta > 0; sharded arrays,
                  written by every process for its shards) + rng
  meta/           JSON: loop step, data-iterator state (grain `get_state()`), anything else the loop adds
  checksums.json  {"files": {relative path: {"size", "sha256"}}} of every file above

Commits. orbax writes a step into `<step>.orbax-checkpoint-tmp/` and commits it by renaming that folder to
`<step>/` (on GCS, where renames are not atomic, by writing `<step>/commit_success.txt`); a job killed
mid-save leaves only the tmp folder, which is never a step. `checksums.json` is written by process 0
from orbax's post-finalization hook, after every process has written its files and before the rename,
so every step this code commits carries its checksums. A step without them (written before checksums
existed) is trusted as orbax committed it, unverified: restoring it must succeed or it is skipped.

Saving is asynchronous: `save` returns once the arrays are copied off the devices (they may then be
donated by the next update) and the files are written in the background. A failed write (a full disk)
surfaces as `CheckpointSaveFailed` from the next `save` / `wait` / `close`; orbax deletes steps beyond
`max_to_keep` only after the new step committed, so a failed save never costs the previous checkpoint.

Restoring reads the arrays straight onto the shardings of the updater it restores into, so a checkpoint
written on one mesh shape restores onto any other (or onto a single device). A step that fails its
checksums or whose restore raises is moved aside to `<step>.corrupt` with one warning, and the previous
step is restored; when none is left, `CheckpointCorrupted`.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from mmrag_jax.errors import RunError
from mmrag_jax.rl.checksums import CHECKSUMS, verify_step, write_checksums
from mmrag_jax.rl.update import PolicyUpdater, put_global

__all__ = [
    "CheckpointCorrupted", "CheckpointError", "CheckpointSaveFailed", "CheckpointStore", "iterator_state",
    "latest_committed_step", "restore_iterator_state",
]

_log = logging.getLogger(__name__)

_CORRUPT_SUFFIX = ".corrupt"

# Raw uint32 key data of the default PRNG implementation (threefry: [2]).
_RAW_KEY_SHAPE = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))).shape


class CheckpointError(RunError):
  """A checkpoint cannot be written or restored as asked (the message names the step folder)."""


class CheckpointCorrupted(CheckpointError):
  """Steps were committed but none passes its checksums and restores."""


class CheckpointSaveFailed(CheckpointError):
  """Writing a checkpoint failed (in `save` or in the background); the earlier checkpoints are intact."""


# -- committed steps and checksums -----------------------------------------------------------------


def _committed_steps(directory: str) -> list[int]:
  """Steps orbax committed under `directory`, ascending; uncommitted tmp folders are not steps."""
  if not os.path.isdir(directory):
    return []
  return sorted(m.step for m in ocp.path.step.standard_name_format().find_all(directory))


def latest_committed_step(directory: str) -> int | None:
  """The newest committed step (not verified: `CheckpointStore.latest_step` is), or None.

  Cheap (a directory listing): whether a run resumes. A resuming run restores with
  `CheckpointStore.restore`, which skips corrupt steps or raises `CheckpointCorrupted`.
  """
  steps = _committed_steps(directory)
  return steps[-1] if steps else None


def _uncommitted_step_dir(directory: str, step: int) -> str:
  """The folder orbax is finalizing for `step`: `<step>.orbax-checkpoint-tmp*`, or `<step>` itself when
  orbax commits with a marker file instead of a rename (GCS)."""
  tmp = glob.glob(os.path.join(glob.escape(directory), f"{step}{ocp.path.step.TMP_DIR_SUFFIX}*"))
  if len(tmp) == 1:
    return tmp[0]
  final = os.path.join(directory, str(step))
  if not tmp and os.path.isdir(final):
    return final
  raise FileNotFoundError(f"cannot tell which folder holds the uncommitted step {step} in {directory}: {tmp}")


def _failure_reason(error: BaseException) -> str:
  """The OS error behind `error` (`[Errno 28] No space left on device: '...'`), else its first line."""
  seen, cause = set(), error
  while cause is not None and id(cause) not in seen:
    if isinstance(cause, OSError):
      return str(cause)
    seen.add(id(cause))
    cause = cause.__cause__ or cause.__context__
  lines = str(error).strip().splitlines()
  return f"{type(error).__name__}: {lines[0] if lines else ''}"


class _WithoutOrbaxTracebacks(logging.Filter):
  """Keeps orbax's error lines but drops their tracebacks: a failed background save logs three, and
  `CheckpointSaveFailed` (whose cause chain holds the traceback) already says what failed."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.exc_info and f"{os.sep}orbax{os.sep}" in record.pathname:
      record.exc_info = record.exc_text = None
    return True


def _quiet_orbax_tracebacks() -> None:
  absl = logging.getLogger("absl")
  if not any(isinstance(f, _WithoutOrbaxTracebacks) for f in absl.filters):
    absl.addFilter(_WithoutOrbaxTracebacks())


def _process_0_agrees(ok: bool) -> bool:
  """Process 0's verdict on every process (checksums are verified once, on process 0)."""
  if jax.process_count() == 1:
    return ok
  return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


def _all_agree(ok: bool) -> bool:
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


# -- data iterators --------------------------------------------------------------------------------


def iterator_state(iterator: Any) -> Any:
  """A JSON-serializable snapshot of a data iterator (grain iterators' `get_state()`), or None."""
  if iterator is None or not hasattr(iterator, "get_state"):
    return None
  state = iterator.get_state()
  return {"bytes": state.decode()} if isinstance(state, bytes) else state


def restore_iterator_state(iterator: Any, state: Any) -> None:
  """Undoes `iterator_state`: the next element of `iterator` is the one after the snapshot."""
  if state is None:
    return
  if not hasattr(iterator, "set_state"):
    raise ValueError("the checkpoint holds a data-iterator state but the iterator has no set_state()")
  iterator.set_state(state["bytes"].encode() if isinstance(state, dict) and set(state) == {"bytes"} else state)


# -- the store -------------------------------------------------------------------------------------


def _abstract(tree: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


class CheckpointStore:
  """An orbax CheckpointManager for GRPO training state (see the module docstring).

  directory: where step folders go; max_to_keep: older checkpoints are deleted (once a newer one
  committed); async_save: write in the background (else `save` returns once the step committed).
  Call from every process, in the same order (saves and restores are collective).
  """

  def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.async_save = async_save
    _quiet_orbax_tracebacks()
    # Always orbax's async checkpointer: only it runs the post-finalization hook that writes the
    # checksums inside the uncommitted step. A synchronous store waits for each save instead.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=True, create=True,
        async_options=ocp.AsyncOptions(post_finalization_callback=self._checksum_saving_step))
    # Handlers named up front: a fresh manager can then read a step's tree metadata before restoring.
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
    self._saving: int | None = None  # the step whose background write is in flight
    self._verdicts: dict[int, str | None] = {}  # step -> why unusable (None: verified)

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def all_steps(self) -> list[int]:
    """Committed steps, ascending (verified or not)."""
    return _committed_steps(self.directory)

  def latest_step(self) -> int | None:
    """The newest committed step that passes its checksums (or has none, see the module docstring).

    None when no step was ever committed (an empty directory, or only the tmp folder of a save that
    never finished). Raises `CheckpointCorrupted` when steps were committed but none verifies. The
    first call per step reads its files once (on process 0); verdicts are cached.
    """
    steps = self.all_steps()
    for step in reversed(steps):
      if self._verdict(step) is None:
        return step
    if steps:
      raise self._corrupted(steps)
    return None

  # -- saving --------------------------------------------------------------------------------------

  def save(self, step: int, updater: PolicyUpdater, rng: jax.Array, meta: dict[str, Any]) -> None:
    """Saves the updater's params, optimizer state and KL reference (beta > 0), the raw uint32 `rng`
    key and JSON `meta`. Raises `CheckpointSaveFailed` for this save or an earlier background one."""
    json.dumps(meta)  # fail here, not in a background thread, on a value JSON cannot hold
    self._finish_pending()
    # A global replicated array, so every process takes part in writing it (multi-host safe).
    rng = put_global(np.asarray(rng), NamedSharding(updater.mesh, PartitionSpec()))
    state = {"params": updater.params, "opt_state": updater.opt_state, "rng": rng}
    if updater.reference_params is not None:
      state["reference"] = updater.reference_params
    self._saving = step
    try:
      # force: orbax's save policy would silently skip a step at or below its newest one.
      self.manager.save(step, force=True, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                                  meta=ocp.args.JsonSave({"step": step, **meta})))
    except Exception as error:
      self._saving = None
      raise self._save_failed(step, error) from error
    if not self.async_save:
      self._finish_pending()

  def _checksum_saving_step(self) -> None:
    """orbax's post-finalization hook (process 0, background thread, all files written, not committed)."""
    write_checksums(_uncommitted_step_dir(self.directory, self._saving))

  def _finish_pending(self) -> None:
    """Waits for the background write; its failure becomes `CheckpointSaveFailed` (raised once)."""
    step = self._saving
    try:
      self.manager.wait_until_finished()
    except Exception as error:
      raise self._save_failed(step, error) from error
    finally:
      self._saving = None  # only now: the hook of the pending save reads it
    if step is not None:
      self._verdicts[step] = None  # checksummed from what was written

  def _save_failed(self, step: int | None, error: BaseException) -> CheckpointSaveFailed:
    try:  # orbax dropped the steps it meant to delete from its list; they are still on disk
      self.manager.reload()
    except Exception:  # the save error is the one to report
      pass
    kept = latest_committed_step(self.directory)
    kept = f"step {kept} is the latest checkpoint" if kept is not None else "there is no earlier checkpoint"
    return CheckpointSaveFailed(f"saving checkpoint step {step} to {self.directory} failed: "
                                f"{_failure_reason(error)} ({kept})")

  def wait(self) -> None:
    """Blocks until the pending background write committed; raises `CheckpointSaveFailed` if it failed."""
    self._finish_pending()

  def close(self) -> None:
    try:
      self._finish_pending()
    finally:
      self.manager.close()

  # -- restoring -----------------------------------------------------------------------------------

  def restore(self, updater: PolicyUpdater, step: int | None = None) -> tuple[jax.Array, dict[str, Any]]:
    """Loads checkpoint `step` (default: the newest usable one) into `updater` on its mesh and shardings.

    Returns (rng, meta). With the default, a step that fails its checksums or whose restore raises is
    moved aside (`<step>.corrupt`, one warning) and the previous one is tried. Raises FileNotFoundError
    when nothing was committed, `CheckpointCorrupted` when no step restores (or `step` does not), and
    `CheckpointError` when a sound step does not fit the updater (it passed its checksums but has another
    structure: other model or optimizer settings, or no KL reference while beta > 0; the other way round
    the saved reference is not read). Nothing is moved aside then.
    """
    self._finish_pending()
    steps = self.all_steps()
    if not steps or (step is not None and step not in steps):
      raise FileNotFoundError(f"no checkpoint{'' if step is None else f' step {step}'} in {self.directory}")
    steps = steps if step is None else [step]
    bad = []
    for candidate in reversed(steps):
      if self._verdict(candidate) is None:
        try:
          restored = self._restore_step(updater, candidate)
          ok = True
        except CheckpointError:
          raise
        except Exception as error:  # a step orbax cannot read: skip it like a checksum mismatch
          self._verdicts[candidate] = _failure_reason(error)
          ok = False
        if _all_agree(ok):
          if step is None:
            self._set_aside(bad, candidate)
          return restored
        self._verdicts[candidate] = self._verdicts[candidate] or "restoring it failed on another process"
        if os.path.isfile(os.path.join(self.step_dir(candidate), CHECKSUMS)):
          # Its bytes are as written: the checkpoint is sound and this run's state has another structure.
          raise CheckpointError(
              f"checkpoint {self.step_dir(candidate)} passed its checksums but does not fit this run "
              f"({self._verdicts[candidate]}): it was written with other model or optimizer settings (e.g. "
              "model.freeze_vision_tower, rl.beta, the model); rerun with those settings or use a new workdir")
      bad.append(candidate)
    raise self._corrupted(bad)

  def _restore_step(self, updater: PolicyUpdater, step: int) -> tuple[jax.Array, dict[str, Any]]:
    saved = self.manager.item_metadata(step)["state"]
    wants_reference = updater.reference_params is not None
    if wants_reference and "reference" not in saved:
      raise CheckpointError(f"checkpoint {self.step_dir(step)} holds no KL reference policy: it was written "
                            "with beta = 0, and this run has beta > 0 (resume with beta = 0 or use a new workdir)")
    replicated = NamedSharding(updater.mesh, PartitionSpec())
    target = {"params": _abstract(updater.params, updater.param_shardings),
              "opt_state": _abstract(updater.opt_state, updater.opt_shardings),
              "rng": jax.ShapeDtypeStruct(_RAW_KEY_SHAPE, jnp.uint32, sharding=replicated)}
    if wants_reference:
      target["reference"] = _abstract(updater.params, updater.param_shardings)
    items = {"state": ocp.args.StandardRestore(target), "meta": ocp.args.JsonRestore()}
    state = None
    if "reference" in saved and not wants_reference:
      # StandardRestore cannot leave a subtree unread; the PyTree handler's partial restore can.
      with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
        state = checkpointer.restore(os.path.join(self.step_dir(step), "state"), args=ocp.args.PyTreeRestore(
            target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True))
      del items["state"]
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    state = restored["state"] if state is None else state
    updater.set_state(state["params"], state["opt_state"])
    if wants_reference:
      updater.reference_params = state["reference"]
    return state["rng"], dict(restored["meta"])

  def _verdict(self, step: int) -> str | None:
    if step not in self._verdicts:
      reason = verify_step(self.step_dir(step)) if jax.process_index() == 0 else None
      if not _process_0_agrees(reason is None):
        reason = reason or "it failed verification on process 0"
      self._verdicts[step] = reason
    return self._verdicts[step]

  def _set_aside(self, bad: list[int], restored: int) -> None:
    """Renames the unusable steps newer than `restored` to `<step>.corrupt`: a resumed run saves those
    step numbers again, and orbax would neither overwrite them nor count them right for max_to_keep."""
    if not bad:
      return
    if jax.process_index() == 0:
      for step in bad:
        source, target = self.step_dir(step), self.step_dir(step) + _CORRUPT_SUFFIX
        suffix = 1
        while os.path.exists(target):
          target, suffix = f"{source}{_CORRUPT_SUFFIX}-{suffix}", suffix + 1
        try:
          os.rename(source, target)
          moved = f"moved it to {target}"
        except OSError as error:
          moved = f"could not move it aside ({error})"
        _log.warning("checkpoint %s is unusable: %s; %s and restored step %d instead",
                     source, self._verdicts[step], moved, restored)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("mmrag_jax checkpoints set aside")
    self.manager.reload()

  def _corrupted(self, steps: list[int]) -> CheckpointCorrupted:
    reasons = "; ".join(f"step {s}: {self._verdicts.get(s) or 'unusable'}" for s in sorted(steps, reverse=True))
    return CheckpointCorrupted(f"no usable checkpoint in {self.directory} ({reasons}); "
                               "refusing to start over next to them: move them away to start a new run")
