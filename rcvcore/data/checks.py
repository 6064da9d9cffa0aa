"""Checking that image files decode, once: results are cached by path, size and mtime.

Real datasets hold the odd truncated JPEG or a file that is not an image at all. Each file is
decoded once with :func:`rcvcore.data.images.read_rgb` (in parallel); the verdict and the image
size are stored in ``cache_dir/image-checks/<root>.json`` so the next load of the same tree only
stats the files.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from .._shared import ProgressFn
from .._utils import parallel_map
from .base import atomic_write_text, clean_temp_files, file_stamp
from .images import FORMATS, ImageReadError, describe_error, read_rgb

CHUNK = 64
# Bumped when the verdicts change (v2: reasons never quote a file's content).
_VERSION = 2


def _check_chunk(paths: Sequence[str], decode: bool) -> list[list]:
    out = []
    for p in paths:
        try:
            if decode:
                im = read_rgb(p)
                out.append([None, im.size[0], im.size[1]])
            else:
                from PIL import Image

                if os.path.getsize(p) == 0:
                    raise ImageReadError(p, "empty file (0 bytes)")
                with Image.open(p, formats=FORMATS) as im:
                    out.append([None, im.size[0], im.size[1]])
        except ImageReadError as e:
            out.append([e.reason, 0, 0])
        except Exception as e:  # PIL's header parser raises many types
            out.append([describe_error(e, p), 0, 0])
    return out


def check_images(paths: Sequence[str], cache_dir: Path | None, *, decode: bool = True,
                 workers: int | None = None,
                 progress: ProgressFn | None = None) -> dict[str, tuple[str | None, int, int]]:
    """Check that each file is a readable image.

    Args:
        paths: absolute image paths.
        cache_dir: where verdicts are cached (None: no cache).
        decode: decode every pixel (catches truncated files); False only reads the headers.
        workers: processes (default: all cores).
        progress: optional ``progress(fraction, message)``.

    Returns:
        ``{path: (reason or None, width, height)}``; ``reason`` is None for a good image.
    """
    paths = list(paths)
    cache_file = None
    cached: dict = {}
    if cache_dir is not None and paths:
        key = hashlib.sha256(json.dumps([decode, os.path.commonpath(paths), _VERSION]).encode())
        cache_file = Path(cache_dir) / "image-checks" / f"{key.hexdigest()[:20]}.json"
        try:
            cached = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            cached = {}
    result: dict[str, tuple[str | None, int, int]] = {}
    todo = []
    stamps = {}
    for p in paths:
        stamps[p] = file_stamp(p)
        hit = cached.get(p)
        if hit and stamps[p] != "missing" and hit[0] == stamps[p]:
            result[p] = (hit[1], int(hit[2]), int(hit[3]))
        else:
            todo.append(p)
    if todo:
        chunks = [todo[i:i + CHUNK] for i in range(0, len(todo), CHUNK)]
        outs = parallel_map(_check_chunk, [(c, decode) for c in chunks], workers=workers,
                            progress=progress, message="checking images")
        for chunk, out in zip(chunks, outs):
            for p, (reason, w, h) in zip(chunk, out):
                result[p] = (reason, w, h)
                if stamps[p] != "missing":
                    cached[p] = [stamps[p], reason, w, h]
        if cache_file is not None:
            try:
                cache_file.parent.mkdir(parents=True, exist_ok=True)
                clean_temp_files(cache_file.parent)
                atomic_write_text(cache_file, json.dumps(cached))
            except OSError:
                pass  # a read-only cache only costs speed
    return result
