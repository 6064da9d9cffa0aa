"""Reading image files robustly: any common format and mode, to 8-bit RGB."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError

# Anything above this many pixels is treated as a decompression bomb (a 40x whole-slide *region*
# is far below it; a real slide must be tiled before it comes here).
MAX_PIXELS = 20_000 * 20_000

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".ppm"}


class ImageReadError(UserError):
    """An image file that cannot be used; the message names the file and the reason."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def _to_uint8(arr: np.ndarray) -> np.ndarray:
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
    if not p.is_file():
        raise ImageReadError(p, "file not found")
    if p.stat().st_size == 0:
        raise ImageReadError(p, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageReadError(p, f"image is {w}x{h} pixels, above the limit of "
                                            f"{max_pixels:,} pixels; tile it into patches first")
                im.load()
                return _convert(im)
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageReadError(p, f"refused as a decompression bomb ({e})") from None
    except Exception as e:  # PIL raises many types for broken files
        if p.suffix.lower() in {".tif", ".tiff"}:
            try:  # tifffile reads TIFF flavours PIL cannot (float, multi-sample 16-bit)
                return _read_tiff(p, max_pixels)
            except ImageReadError:
                raise
            except Exception:
                pass
        raise ImageReadError(p, f"not a readable image ({type(e).__name__}: {e})") from None


def _convert(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im.copy()
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = _to_uint8(np.asarray(im))
        return Image.fromarray(arr).convert("RGB")
    return im.convert("RGB")


def _read_tiff(p: Path, max_pixels: int) -> Image.Image:
    import tifffile

    arr = tifffile.imread(p)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim not in (2, 3):
        raise ImageReadError(p, f"unsupported TIFF shape {arr.shape}")
    if arr.shape[0] * arr.shape[1] > max_pixels:
        raise ImageReadError(p, f"image is {arr.shape[1]}x{arr.shape[0]} pixels, above the limit")
    arr = _to_uint8(arr)
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return Image.fromarray(arr).convert("RGB")


def is_image_file(path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES
