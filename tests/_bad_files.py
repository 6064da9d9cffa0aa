"""A corpus of bad (and awkward but usable) image files, shared by the CLI bad-input tests
(tests/test_bad_input.py) and the dashboard's Predict page (tests/test_app_predict_bad_input.py).

Every bad file carries :data:`SECRET`, which must never be printed or shown.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from _train_fixtures import disc_image
from PIL import Image

SECRET = "root:$6$s3cr3t-hash-line"


# --------------------------------------------------------------------------------------------
# bad image files: name -> (writer, expected reason or None when the file must be used)
# --------------------------------------------------------------------------------------------

def _png_chunk(kind_: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind_ + data
            + struct.pack(">I", zlib.crc32(kind_ + data) & 0xFFFFFFFF))


def header_png(path: Path, w: int, h: int) -> None:
    """A tiny PNG whose header claims ``w`` x ``h`` pixels."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
                     + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b""))


def good_image(seed: int) -> Image.Image:
    return Image.fromarray(disc_image(6.0, seed))


def _truncated_png(p):
    good_image(1).save(p)
    p.write_bytes(p.read_bytes()[:300])


def _truncated_jpeg(p):
    good_image(2).save(p, quality=95)
    p.write_bytes(p.read_bytes()[:200])


def _text(p):
    p.write_text(f"{SECRET}\nthis is a text file, not an image\n")


def _random(p):
    p.write_bytes(np.random.default_rng(0).bytes(2000) + SECRET.encode())


def _eps(p):
    p.write_text(f"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n% {SECRET}\nshowpage\n")


def _ppm_token(p):
    p.write_bytes(b"P6\n" + SECRET.encode() * 3 + b"\n")


def _bomb_over(p):
    header_png(p, 40_000, 40_000)         # 1.6 Gpx: above twice the limit, Pillow refuses


def _bomb_limit(p):
    header_png(p, 22_000, 22_000)         # 484 Mpx: above the 400 Mpx limit the code states


def _sixteen_bit(p):
    Image.fromarray(disc_image(6.0, 3)[..., 0].astype(np.uint16) * 257).save(p)


def _rgba(p):
    rgb = disc_image(6.0, 4)
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])).save(p)


def _one_pixel(p):
    Image.new("RGB", (1, 1), (90, 60, 150)).save(p)


def _cmyk(p):
    good_image(5).convert("CMYK").save(p, quality=90)


def _float_tiff(p):
    import tifffile

    tifffile.imwrite(p, disc_image(6.0, 6).astype(np.float32) / 255.0, photometric="rgb")


def _directory(p):
    p.mkdir()


def _dangling(p):
    p.symlink_to(p.parent / "does-not-exist.png")


def _empty(p):
    p.write_bytes(b"")


IMAGE_CASES = {
    "truncated.png": (_truncated_png, "truncated|corrupt"),
    "truncated.jpg": (_truncated_jpeg, "truncated|corrupt"),
    "empty.png": (_empty, "empty"),
    "text.png": (_text, "not a readable image"),
    "random.jpg": (_random, "not a readable image"),
    "postscript.png": (_eps, "not a readable image"),
    "ppm-token.ppm": (_ppm_token, "not a readable image|truncated|corrupt"),
    "text.tif": (_text, "not a readable image"),
    "bomb.png": (_bomb_over, "decompression bomb"),
    "bomb-400mpx.png": (_bomb_limit, "above the limit of 400,000,000 pixels"),
    "folder.png": (_directory, "not a file"),
    "dangling.png": (_dangling, "symlink to a missing file"),
    "gray16.png": (_sixteen_bit, None),
    "rgba.png": (_rgba, None),
    "one-pixel.png": (_one_pixel, None),
    "cmyk.jpg": (_cmyk, None),
    "float.tif": (_float_tiff, None),
}
BAD_IMAGES = [n for n, (_, why) in IMAGE_CASES.items() if why]


def write_bad_images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (writer, _) in IMAGE_CASES.items():
        writer(folder / name)
