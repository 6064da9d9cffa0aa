"""Leaving groups out of a scan, so that a cut is chosen without the data a comparison scores.

:func:`read_exclusions` turns ``scan --exclude SPEC`` into image paths: a text file (one path per
line), a finished run directory (its test patches) or a comparison / run group folder (the test
patches of every run in it). :func:`rcvcore.compare.comparison_test_paths` gives, before any
training, the test images of every replicate of a comparison: a scan that leaves them out saw
only groups that are in no replicate's test split.

The scan still extracts the excluded images (the activation cache is keyed on the whole
dataset); they are dropped before any fit, test or choice, and counted in its ``scoring``.
"""
from __future__ import annotations

from pathlib import Path

from ._files import read_json
from .errors import UserError


def read_exclusions(spec: str) -> tuple[str, ...]:
    """The image paths named by ``spec`` (sorted, unique).

    Raises:
        UserError: ``spec`` is neither a readable text file nor a folder with runs.
    """
    p = Path(spec).expanduser()
    if p.is_dir():
        results = [p / "result.json"] if (p / "result.json").is_file() else \
            sorted(p.glob("*/result.json"))
        if not results:
            raise UserError(f"--exclude {spec}: the folder holds no finished run (result.json); "
                            "give a run or comparison folder, or a text file of image paths.")
        paths = set()
        for r in results:
            paths.update(t["path"] for t in (read_json(r) or {}).get("test_predictions", []))
        return tuple(sorted(paths))
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        raise UserError(f"--exclude {spec}: not a readable text file of image paths (one per "
                        "line) nor a run folder.") from None
    return tuple(sorted({line.strip() for line in text.splitlines()
                         if line.strip() and not line.lstrip().startswith("#")}))


def keep_rows(paths, ok, exclude) -> tuple[list[int], int]:
    """The indices of ``ok`` whose image is not excluded, and how many were dropped."""
    drop = set(exclude)
    kept = [int(i) for i in ok if paths[int(i)] not in drop]
    return kept, len(ok) - len(kept)
