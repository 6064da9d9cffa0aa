"""Bounding-box annotations in the PASCAL VOC XML format (used by VOC and ILSVRC/ImageNet).

The scale measure of a detection dataset is the area of the object's box divided by the area of
the image, with the box corners taken as written (``(xmax - xmin) * (ymax - ymin)``, no +1) and
clipped to the image. When an image holds several boxes of the class, the largest one is used.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass


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
        return float(text.strip())
    except ValueError:
        raise AnnotationError(f"<{tag}> of {where} is not a number") from None  # never quoted


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
        except ValueError:
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
