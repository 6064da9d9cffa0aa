"""Bounding-box annotations in the PASCAL VOC XML format (used by VOC and ILSVRC/ImageNet).

The loaders' measure (``Sample.measure``) is the area of the object's box divided by the area of
the image, with the box corners taken as written (``(xmax - xmin) * (ymax - ymin)``, no +1) and
clipped to the image. When an image holds several boxes of the class, the largest one is used.

The network does not see the whole image: the weights' preprocessing resizes the short side
(256 or 342 px) and crops the centre (224 or 299 px), so a 500x375 photograph shows it 57 % of
its area and boxes near the edges are cut. :func:`visible_box_fraction` gives the measure of what
the network sees, the largest box's area inside that crop over the crop's area; the loaders
record each sample's boxes and image size (``Dataset.info["box_geometry"]``) so that the scan
computes it for the weights it scans.
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from .base import DatasetError

#: a coordinate or image side beyond this is not a pixel position (a malformed or hostile XML)
MAX_COORD = 10**7


class AnnotationError(ValueError):
    """An annotation file that does not parse or makes no sense; the message says why."""


@dataclass(frozen=True)
class Box:
    """One object of an annotation."""

    name: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    difficult: bool = False

    def area(self, width: float, height: float) -> float:
        """Area in pixels, clipped to the ``width`` x ``height`` image."""
        w = min(self.xmax, width) - max(self.xmin, 0.0)
        h = min(self.ymax, height) - max(self.ymin, 0.0)
        return max(0.0, w) * max(0.0, h)


@dataclass(frozen=True)
class Annotation:
    """Image size (0 when the file does not give it) and boxes of one annotation file."""

    width: int
    height: int
    boxes: tuple[Box, ...]


def _num(node, tag: str, where: str) -> float:
    text = node.findtext(tag)
    if text is None:
        raise AnnotationError(f"<{tag}> missing in {where}")
    try:
        value = float(text.strip())
    except ValueError:
        raise AnnotationError(f"<{tag}> of {where} is not a number") from None  # never quoted
    if not math.isfinite(value) or abs(value) > MAX_COORD:
        raise AnnotationError(f"<{tag}> of {where} is not a pixel coordinate (beyond "
                              f"{MAX_COORD:,} px or not finite)")
    return value


def parse_voc_xml(path) -> Annotation:
    """Parse a VOC / ILSVRC annotation file.

    Raises:
        AnnotationError: unreadable file, XML that does not parse, a box without coordinates or
            with ``xmax <= xmin`` / ``ymax <= ymin``.
    """
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise AnnotationError(f"XML does not parse ({e})") from None
    except OSError as e:
        raise AnnotationError(f"cannot read annotation ({e})") from None
    width = height = 0
    size = root.find("size")
    if size is not None:
        try:
            width = int(float(size.findtext("width") or 0))
            height = int(float(size.findtext("height") or 0))
        except (ValueError, OverflowError):   # "1e999" is a float but no image size
            width = height = 0
        if not (0 <= width <= MAX_COORD and 0 <= height <= MAX_COORD):
            width = height = 0
    boxes = []
    for i, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        if bb is None:
            raise AnnotationError(f"object {i} ({name or 'unnamed'}) has no <bndbox>")
        where = f"object {i} ({name or 'unnamed'})"
        xmin, ymin = _num(bb, "xmin", where), _num(bb, "ymin", where)
        xmax, ymax = _num(bb, "xmax", where), _num(bb, "ymax", where)
        if xmax <= xmin or ymax <= ymin:
            raise AnnotationError(f"{where} has an empty box "
                                  f"({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g})")
        difficult = (obj.findtext("difficult") or "0").strip() in ("1", "true", "True")
        boxes.append(Box(name, xmin, ymin, xmax, ymax, difficult))
    return Annotation(width, height, tuple(boxes))


def largest_box_fraction(boxes, width: float, height: float) -> float | None:
    """Area of the largest of ``boxes`` over the image area, or None when there is no box."""
    if width <= 0 or height <= 0:
        raise AnnotationError(f"image size {width}x{height} is not positive")
    areas = [b.area(width, height) for b in boxes]
    if not areas:
        return None
    return max(areas) / float(width * height)


def _resized_size(width: float, height: float, resize: int) -> tuple[int, int]:
    """Output size of torchvision's ``resize(img, [resize])``: the short side becomes
    ``resize``, the long side ``int(resize * long / short)`` (truncated, as torchvision)."""
    if width <= height:
        return int(resize), int(resize * height / width)
    return int(resize * width / height), int(resize)


def crop_window(width: float, height: float, resize: int, crop: int
                ) -> tuple[float, float, float, float, float, float]:
    """The network input's window in the original image's pixels, for a resize of the short side
    to ``resize`` then a centre crop of ``crop`` x ``crop`` (torchvision's ``center_crop``
    rounding): ``(x0, y0, x1, y1, sx, sy)`` with ``sx, sy`` the resize factors."""
    if width <= 0 or height <= 0:
        raise AnnotationError(f"image size {width}x{height} is not positive")
    nw, nh = _resized_size(width, height, resize)
    sx, sy = nw / float(width), nh / float(height)
    left = int(round((nw - crop) / 2.0))
    top = int(round((nh - crop) / 2.0))
    # a crop larger than the resized image is padded by torchvision: the window is clipped
    x0, x1 = max(left, 0) / sx, min(left + crop, nw) / sx
    y0, y1 = max(top, 0) / sy, min(top + crop, nh) / sy
    return x0, y0, x1, y1, sx, sy


def visible_box_fraction(boxes, width: float, height: float, *, resize: int, crop: int
                         ) -> float | None:
    """Area of the largest box as the network sees it (inside the centre crop, after the resize)
    divided by the crop's area; 0.0 when every box lies outside the crop, None without boxes.

    ``boxes`` are :class:`Box` or ``(xmin, ymin, xmax, ymax)`` tuples in the ``width`` x
    ``height`` image's pixels.
    """
    x0, y0, x1, y1, sx, sy = crop_window(width, height, resize, crop)
    best = None
    for b in boxes:
        bx0, by0, bx1, by1 = ((b.xmin, b.ymin, b.xmax, b.ymax) if isinstance(b, Box) else b)
        w = min(bx1, x1, width) - max(bx0, x0, 0.0)
        h = min(by1, y1, height) - max(by0, y0, 0.0)
        area = max(0.0, w) * max(0.0, h) * sx * sy          # in the network input's pixels
        best = area if best is None else max(best, area)
    if best is None:
        return None
    return best / float(crop * crop)


BOX_MEASURES = ("visible", "image")


def check_box_measure(kind: str, value) -> str:
    value = str(value).strip().lower()
    if value not in BOX_MEASURES:
        raise DatasetError(f"{kind}: box_measure must be 'visible' (default: the box area inside "
                           f"the network's centre crop / the crop's area) or 'image' (box area "
                           f"/ whole image area, for a pipeline that resizes the whole image); "
                           f"got {value!r}.")
    return value
