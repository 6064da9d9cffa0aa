"""Reading image files robustly: any common format and mode, to 8-bit RGB."""
from __future__ import annotations

import os
import stat
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import UserError

# Anything above this many pixels is treated as a decompression bomb (a 40x whole-slide *region*
# is far below it; a real slide must be tiled before it comes here).
MAX_PIXELS = 20_000 * 20_000
# Pillow's own guard (89 Mpx by default: it warns above, refuses above twice that) is set here,
# once, to the same limit, so every Image.open in the process (header checks, the dashboard)
# agrees with the limit this module states.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".ppm"}
# The decoders Pillow may use: the formats of IMAGE_SUFFIXES by content (never EPS, which runs
# Ghostscript, nor the many exotic plugins whose parsers see little use).
FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "DIB", "GIF", "WEBP", "PPM")
_FORMAT_NAMES = "PNG, JPEG, TIFF, BMP, GIF, WebP or PPM"


class ImageReadError(UserError):
    """An image file that cannot be used; the message names the file and the reason."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def describe_error(e: BaseException, path=None) -> str:
    """A reason for an image that failed to decode, which never quotes the file's content.

    Decoder messages can carry bytes of the file (a header token, a bad chunk); the reason says
    what kind of failure it was instead (and names the file, ``path``, when given).
    """
    if isinstance(e, Image.DecompressionBombError):
        return (f"refused as a decompression bomb (more than {2 * MAX_PIXELS:,} pixels); "
                "tile it into patches first")
    if isinstance(e, UnidentifiedImageError) or type(e) is SyntaxError:
        name = f"{Path(path).name} is " if path is not None else ""
        return f"not a readable image ({name}not a {_FORMAT_NAMES} file)"
    if isinstance(e, OSError) and e.errno is not None and e.strerror:
        return f"cannot be read ({e.strerror})"
    if isinstance(e, (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error,
                      zlib.error)):
        return f"not a readable image (truncated or corrupt image data: {type(e).__name__})"
    return f"not a readable image ({type(e).__name__})"


def png_complete(path) -> bool:
    """True when ``path`` is a non-empty PNG whose last chunk is ``IEND`` (not truncated).

    A cheap check (a stat and 12 bytes) for generated PNGs kept in the cache.
    """
    try:
        with open(path, "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                return False
            f.seek(-12, os.SEEK_END)
            return f.read(12) == b"\x00\x00\x00\x00IEND\xaeB`\x82"
    except (OSError, ValueError):
        return False


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale an integer or float array of any depth to uint8 (16-bit TIFFs, float images)."""
    if arr.dtype == np.uint8:
        return arr
    arr = arr.astype(np.float64)
    if arr.size and arr.max() > 255:                      # 16-bit (or wider) data
        hi = 65535.0 if arr.max() <= 65535 else float(arr.max())
        arr = arr / hi * 255.0
    elif arr.size and arr.max() <= 1.0 and arr.min() >= 0.0:  # float images in [0, 1]
        arr = arr * 255.0
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def read_rgb(path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Read ``path`` as an 8-bit RGB PIL image.

    Handles RGB, RGBA (composited on white), palette, grayscale, 16-bit and float TIFFs.

    Raises:
        ImageReadError: the file is missing, empty, not an image, truncated, or larger than
            ``max_pixels`` (a decompression bomb).
    """
    p = Path(path)
    try:
        st = p.stat()
    except (OSError, ValueError) as e:
        missing = isinstance(e, FileNotFoundError) or isinstance(e, ValueError)
        raise ImageReadError(p, "file not found" if missing else describe_error(e)) from None
    if not stat.S_ISREG(st.st_mode):
        raise ImageReadError(p, "not a file" if p.exists() else "file not found")
    if st.st_size == 0:
        raise ImageReadError(p, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # the explicit size check below refuses bombs, with the size and the limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p, formats=FORMATS) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageReadError(p, f"image is {w}x{h} pixels, above the limit of "
                                            f"{max_pixels:,} pixels; tile it into patches first")
                im.load()
                return im if im.mode == "RGB" else to_rgb(im)  # no second full-size copy
    except ImageReadError:
        raise
    except Exception as e:  # PIL raises many types for broken files
        if p.suffix.lower() in {".tif", ".tiff"} and not isinstance(
                e, Image.DecompressionBombError):
            try:  # tifffile reads TIFF flavours PIL cannot (float, multi-sample 16-bit)
                return _read_tiff(p, max_pixels)
            except ImageReadError:
                raise
            except Exception:
                pass
        raise ImageReadError(p, describe_error(e, p)) from None


def to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im.copy()
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = to_uint8(np.asarray(im))
        return Image.fromarray(arr).convert("RGB")
    return im.convert("RGB")


def _read_tiff(p: Path, max_pixels: int) -> Image.Image:
    import tifffile

    with tifffile.TiffFile(p) as tif:     # the size from the header, before any pixel is read
        shape = tif.series[0].shape
        pixels = int(np.prod([d for d in shape if d > 4][:2] or [0]))
        if pixels > max_pixels:
            raise ImageReadError(p, f"image is {shape} (TIFF), above the limit of "
                                    f"{max_pixels:,} pixels; tile it into patches first")
        arr = tif.asarray()
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim not in (2, 3):
        raise ImageReadError(p, f"unsupported TIFF shape {arr.shape}")
    if arr.shape[0] * arr.shape[1] > max_pixels:
        raise ImageReadError(p, f"image is {arr.shape[1]}x{arr.shape[0]} pixels, above the limit")
    arr = to_uint8(arr)
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return Image.fromarray(arr).convert("RGB")


def is_image_file(path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES
