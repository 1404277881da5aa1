"""Checkpoints and the final model that survive a kill or a full disk at any moment.

- ``checkpoint-N`` is built in ``.checkpoint-N.saving`` beside it and renamed into place once every
  process has written its part (``ZephyrTrainer._save_checkpoint``), so a ``checkpoint-N`` is complete;
- ``newest_checkpoint`` picks the newest *complete* checkpoint to resume from (weights, optimizer,
  scheduler, RNG state, a readable trainer_state.json), deletes what killed saves left behind and moves
  incomplete checkpoints (an older zephyr's, or damaged by hand) aside to ``.incomplete-checkpoint-N``;
- ``save_final_model`` builds the model and tokenizer in ``.final.saving`` and moves them into
  output_dir file by file; the caller writes the model card last, so a model card means a finished save.

``ZEPHYR_TEST_PAUSE_AT=NAME`` (the kill tests and ``bench/kill_matrix.py``) makes process 0 print
``zephyr: paused at NAME (pid P)`` on stderr and sleep at that point, to be killed there. NAME is one of
``checkpoint`` (weights of a checkpoint written, the rest not yet; ``checkpoint-N``: only step N's),
``final-save`` (final weights staged, not yet moved in) and ``final-move`` (final weights moved in, the
model card not yet written). ``ZEPHYR_TEST_PAUSE_SECONDS`` sets how long (default 600).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import sys
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path

from zephyr.errors import ZephyrError
from zephyr.io import fsync_paths, fsync_tree, replace_dir

log = logging.getLogger(__name__)

PAUSE_ENV = "ZEPHYR_TEST_PAUSE_AT"
PREFIX = "checkpoint"
FINAL_STAGING = ".final.saving"
MODEL_CARD = "README.md"


class CheckpointError(ZephyrError):
    """A checkpoint or the final model could not be written or read."""


def pause_point(name: str, step: int | None = None) -> None:
    """Stop here for a while when the kill tests ask to (see the module docstring; ``checkpoint-4`` picks
    one step's save); a no-op otherwise."""
    wanted = os.environ.get(PAUSE_ENV)
    if wanted not in (name, f"{name}-{step}"):
        return
    print(f"zephyr: paused at {wanted} (pid {os.getpid()})", file=sys.stderr, flush=True)
    time.sleep(float(os.environ.get("ZEPHYR_TEST_PAUSE_SECONDS", "600")))


def step_of(path: Path) -> int | None:
    name = path.name
    if not name.startswith(f"{PREFIX}-") or not name[len(PREFIX) + 1 :].isdigit():
        return None
    return int(name[len(PREFIX) + 1 :])


# ---- what a complete checkpoint holds ---------------------------------------------------------------


def _torn_safetensors(path: Path) -> bool:
    """A safetensors file is its header's length, the JSON header, then exactly the data it describes."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        return path.stat().st_size != 8 + size + end
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return True


def _torn_file(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return _torn_safetensors(path)
    # torch.save writes zip archives, whose directory sits at the very end: a cut file has none.
    return path.stat().st_size == 0 or (
        path.suffix in (".pt", ".pth", ".bin") and not zipfile.is_zipfile(path)
    )


def _weight_files(ckpt: Path) -> list[Path] | None:
    """The files holding a checkpoint's weights; [] for layouts we cannot check (FSDP's sharded state
    dicts, DeepSpeed's global_step dirs); None when there are no weights at all."""
    if any(ckpt.glob("pytorch_model_fsdp*")) or any(ckpt.glob("global_step*")):
        return []
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (ckpt / index).is_file():
            try:
                shards = set(json.loads((ckpt / index).read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, AttributeError):
                return [ckpt / index]  # unreadable index: reported as torn below
            return [ckpt / s for s in sorted(shards)]
    for name in ("model.safetensors", "adapter_model.safetensors", "pytorch_model.bin", "adapter_model.bin"):
        if (ckpt / name).is_file():
            return [ckpt / name]
    return None


def checkpoint_problem(ckpt: Path, save_only_model: bool = False) -> str | None:
    """Why ``ckpt`` cannot be resumed from bit for bit (a missing or cut file), or None when it can."""
    try:
        state = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
        if not isinstance(state.get("global_step"), int):
            return "trainer_state.json has no global_step"
    except FileNotFoundError:
        return "no trainer_state.json"
    except (OSError, ValueError, AttributeError):
        return "trainer_state.json is unreadable"
    files = _weight_files(ckpt)
    if files is None:
        return "no model weights"
    if not save_only_model:
        if any(ckpt.glob("global_step*")) or any(ckpt.glob("optimizer_*")):
            pass  # DeepSpeed and FSDP keep the optimizer in their own layouts
        elif not (ckpt / "optimizer.pt").is_file() or not (ckpt / "scheduler.pt").is_file():
            return "no optimizer.pt or scheduler.pt"
        else:
            files += [ckpt / "optimizer.pt", ckpt / "scheduler.pt"]
        rng = sorted(ckpt.glob("rng_state*.pth"))
        if not rng:
            return "no rng_state.pth"
        files += rng
    for path in files:
        if not path.is_file():
            return f"{path.name} is missing"
        if _torn_file(path):
            return f"{path.name} is cut short"
    return None


def newest_checkpoint(output_dir: Path, save_only_model: bool = False, tidy: bool = True) -> Path | None:
    """The newest complete ``checkpoint-N`` in output_dir. With ``tidy`` (process 0 only), leftovers of
    killed saves are deleted and incomplete checkpoints moved aside, each logged with the reason."""
    if not output_dir.is_dir():
        return None
    if tidy:
        for junk in [*output_dir.glob(f".{PREFIX}-*"), output_dir / FINAL_STAGING]:
            if junk.is_dir():  # a save that was killed: never complete, never needed
                log.info("Deleting %s, left by an interrupted save", junk)
                shutil.rmtree(junk, ignore_errors=True)
    found = sorted((s, p) for p in output_dir.iterdir() if p.is_dir() and (s := step_of(p)) is not None)
    newest = None
    for _, ckpt in reversed(found):
        problem = checkpoint_problem(ckpt, save_only_model)
        if problem is None:
            newest = newest or ckpt
            continue
        if tidy:
            aside = output_dir / f".incomplete-{ckpt.name}"
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(ckpt, aside)
            log.warning("Skipping %s: %s (an interrupted save); moved it to %s", ckpt, problem, aside)
        else:
            log.warning("Skipping %s: %s (an interrupted save)", ckpt, problem)
    return newest


# ---- writing --------------------------------------------------------------------------------------


def _failed(what: Path, exc: OSError) -> CheckpointError:
    return CheckpointError(
        f"{what}: saving failed ({exc.strerror or exc}); nothing half-written was kept, and the earlier "
        "checkpoints are intact: free the space and rerun with resume_from_checkpoint=true"
    )


@contextmanager
def staged_checkpoint(trainer, final: Path):
    """Yield the staging dir every process writes ``final``'s parts into; rename it into place once all
    have. A failed write (a full disk) leaves no trace but the one-line CheckpointError."""
    staging = final.with_name(f".{final.name}.saving")
    main = trainer.args.should_save
    if main:
        shutil.rmtree(staging, ignore_errors=True)  # an earlier save of this step was killed
    trainer.accelerator.wait_for_everyone()
    try:
        yield staging
        trainer.accelerator.wait_for_everyone()  # every process's RNG state (and shards) are in
        if main:
            fsync_tree(staging)
            replace_dir(staging, final)
            fsync_paths(final.parent)
    except OSError as exc:
        if main:
            shutil.rmtree(staging, ignore_errors=True)
        raise _failed(final, exc) from exc
    trainer.accelerator.wait_for_everyone()


def save_final_model(trainer, tokenizer, output_dir: Path) -> None:
    """Model and tokenizer into output_dir, never torn: written to ``.final.saving`` first, then moved in
    file by file (each move atomic). The model card is removed first and rewritten last by the caller."""
    staging = output_dir / FINAL_STAGING
    main = trainer.args.should_save
    if main:
        shutil.rmtree(staging, ignore_errors=True)
        (output_dir / MODEL_CARD).unlink(missing_ok=True)
    trainer.accelerator.wait_for_everyone()
    try:
        trainer.save_model(str(staging), _internal_call=True)  # the caller pushes once output_dir is whole
        if main:
            tokenizer.save_pretrained(staging)
            pause_point("final-save")
            fsync_tree(staging)
            for item in sorted(staging.iterdir()):
                target = output_dir / item.name
                if item.is_dir():
                    replace_dir(item, target)
                else:
                    os.replace(item, target)
            staging.rmdir()
            fsync_paths(output_dir)
            pause_point("final-move")
    except OSError as exc:
        if main:
            shutil.rmtree(staging, ignore_errors=True)
        raise _failed(output_dir, exc) from exc
    trainer.accelerator.wait_for_everyone()
