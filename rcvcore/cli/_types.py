"""Strict argument types for the command line: plain decimal numbers in a stated range.

Python's ``int`` and ``float`` accept more than a user means: ``1_000`` (read as 1000),
``nan``, ``inf``, and numbers no seed or worker count can be. These refuse them with one
argparse error naming the range (issue 25).
"""
from __future__ import annotations

import argparse
import math
import re

_INT = re.compile(r"[+-]?\d+")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
SEED_MAX = 2**32 - 1   # numpy's legacy seeding and torch both take this range


def _span(lo, hi) -> str:
    if hi is None:
        return f">= {lo}"
    return f"between {lo} and {hi}"


def integer(lo: int | None = None, hi: int | None = None, what: str = "an integer"):
    """An argparse ``type``: a plain decimal integer within [lo, hi]."""
    def parse(text: str) -> int:
        text = text.strip()
        if not _INT.fullmatch(text):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what} (plain digits, no "
                                             "underscores or decimals)")
        value = int(text)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{value} is out of range: give {what} "
                                             f"{_span(lo, hi)}")
        return value
    parse.__name__ = what          # argparse names the type in its message
    return parse


def number(lo: float | None = None, hi: float | None = None, *, open_low: bool = False):
    """An argparse ``type``: a finite decimal number within [lo, hi] (``(lo, hi]`` when
    ``open_low``)."""
    def parse(text: str) -> float:
        text = text.strip()
        if not _NUMBER.fullmatch(text):
            raise argparse.ArgumentTypeError(f"{text!r} is not a plain decimal number")
        value = float(text)
        low_bad = lo is not None and (value <= lo if open_low else value < lo)
        if not math.isfinite(value) or low_bad or (hi is not None and value > hi):
            side = f"> {lo}" if open_low else _span(lo, hi)
            if open_low and hi is not None:
                side = f"> {lo} and <= {hi}"
            raise argparse.ArgumentTypeError(f"{text} is out of range: give a number {side}")
        return value
    parse.__name__ = "number"
    return parse


SEED = integer(0, SEED_MAX, "a seed")
COUNT = integer(1, None, "a count")          # N >= 1 (images, repeats, epochs, tiles...)
NONNEG = integer(0, None, "a count")         # N >= 0 (workers, permutations...)
IMAGE_SIZE = integer(8, 4096, "an image size in px")
