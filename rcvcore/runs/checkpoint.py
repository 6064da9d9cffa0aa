"""Run checkpoints: written atomically with the previous one kept, read with
``weights_only=True``, and the one a resumed run starts from."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from .._files import atomic_path
from ..errors import Notice, UserError
from .directory import CHECKPOINT, PREVIOUS_CHECKPOINT

#: Version of the checkpoint's layout (``format`` key).
CHECKPOINT_FORMAT = 1


def save_checkpoint(path, state: dict) -> None:
    """``torch.save`` atomically: a kill never leaves a torn checkpoint behind. The checkpoint
    it replaces is kept as :data:`PREVIOUS_CHECKPOINT` beside it."""
    path = Path(path)

    def write(tmp: Path) -> None:
        torch.save(state, tmp)
        if path.exists():      # a kill between the two renames leaves the previous one
            os.replace(path, path.with_name(PREVIOUS_CHECKPOINT))
    atomic_path(path, write)


def load_checkpoint(path) -> dict:
    """Read a run checkpoint with ``weights_only=True``."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"No checkpoint at {p}; the run has not finished an epoch yet. Start it "
                        "again without --resume.")
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        # one line, in our words: torch's own can quote the file or run over many lines
        why = ("holds Python objects other than tensors and is refused for safety"
               if "weights only load failed" in str(e).lower() else
               f"is empty, truncated or damaged ({type(e).__name__})")
        raise UserError(f"Checkpoint {p} cannot be read: it {why}.") from None
    if not isinstance(ck, dict):
        raise UserError(f"Checkpoint {p} cannot be read: it is not an rcvcore run checkpoint.")
    return ck


def load_resume_checkpoint(run_dir) -> tuple[dict, Path] | None:
    """The checkpoint a run resumes from: the latest, or the previous one (with a warning) when
    the latest is missing or unreadable; None when the run has none yet.

    Raises:
        UserError: neither checkpoint can be read (then ``train --restart`` starts afresh).
    """
    run = Path(run_dir)
    latest, previous = run / CHECKPOINT, run / PREVIOUS_CHECKPOINT
    if not latest.exists() and not previous.exists():
        return None
    problem = None
    if latest.exists():
        try:
            return load_checkpoint(latest), latest
        except UserError as e:
            problem = str(e)
    if previous.exists():
        try:
            ck = load_checkpoint(previous)
        except UserError as e:
            raise UserError(f"{problem or f'No {CHECKPOINT} in {run}.'} The previous checkpoint "
                            f"cannot be read either ({e}). Start the run again with "
                            f"`python -m rcvcore train --restart --run-dir {run} ...`.") from None
        warnings.warn(f"{problem or f'No {CHECKPOINT} in {run}.'} Resuming from the previous "
                      f"checkpoint {previous} (epoch {ck.get('epoch')}, step "
                      f"{ck.get('global_step')}).", Notice, stacklevel=2)
        return ck, previous
    raise UserError(f"{problem} Start the run again with `python -m rcvcore train --restart "
                    f"--run-dir {run} ...`.")
