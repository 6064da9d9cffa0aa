"""``voc:PATH``: PASCAL VOC 2007 / 2012 as laid out by torchvision's ``VOCDetection``.

Expected layout: ``PATH/VOCdevkit/VOC<year>/{JPEGImages,Annotations,ImageSets/Main}`` (PATH may
also be the ``VOCdevkit`` or the ``VOC<year>`` folder itself). Nothing is ever downloaded.

One sample per (image, chosen class present in it): label = class name, measure
(``box_area_fraction``) = area of the largest non-difficult box of that class / image area
(corners as written, clipped to the image), group = image id; the scan regresses by default the
box area inside the network's centre crop / the crop's area (``box_measure=visible``, see
:mod:`rcvcore.data.boxes`). With ``single_object=True`` only images holding exactly one object of
that class are kept. Splits follow VOC's own image sets:
with ``image_set=trainval`` (default) ``train.txt`` gives train and ``val.txt`` val; ``test``
gives test.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from .._shared import ProgressFn, closest
from .._utils import as_list
from ..errors import Notice
from .base import Dataset, DatasetError, Sample, Skipped
from .boxes import AnnotationError, check_box_measure, largest_box_fraction, parse_voc_xml
from .checks import check_images
from .options import reject_unknown

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")
LAYOUT = ("PATH/VOCdevkit/VOC2007 or VOC2012 with JPEGImages/, Annotations/ and "
          "ImageSets/Main/<image_set>.txt, as torchvision's VOCDetection lays it out")


def find_year_dir(root: Path, year=None) -> Path:
    """The ``VOC<year>`` folder under ``root`` (root, root/VOCdevkit, or root itself)."""
    def is_voc(p: Path) -> bool:
        return (p / "Annotations").is_dir() and (p / "JPEGImages").is_dir()

    if is_voc(root):
        return root
    candidates = []
    for base in (root / "VOCdevkit", root):
        if base.is_dir():
            candidates += [p for p in sorted(base.glob("VOC*")) if p.is_dir() and is_voc(p)]
    if year is not None:
        want = f"VOC{year}"
        found = [c for c in candidates if c.name == want]
        if not found:
            raise DatasetError(f"voc: no {want} folder with JPEGImages/ and Annotations/ under "
                               f"{root}; found: {', '.join(c.name for c in candidates) or 'none'}."
                               f" Expected {LAYOUT}.")
        return found[0]
    if not candidates:
        raise DatasetError(f"voc: no VOC folder under {root}. Expected {LAYOUT}.")
    if len({c.name for c in candidates}) > 1:
        raise DatasetError(f"voc: {root} holds {', '.join(c.name for c in candidates)}; choose "
                           "one with --opt year=2007 or --opt year=2012.")
    return candidates[0]


def _read_ids(path: Path) -> list[str]:
    """The image ids of an ImageSets list (any encoding; one id per line, first field)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"voc: cannot read {path} ({e.strerror}).") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
        warnings.warn(Notice(f"{path} is not UTF-8; read it as latin-1."), stacklevel=3)
    return [ln.split()[0] for ln in text.splitlines() if ln.strip()]


def _bad_id(i: str) -> str | None:
    """Why an ImageSets id cannot name a file of this VOC tree (a path, not a name), or None."""
    if "/" in i or "\\" in i or i.startswith(".") or "\0" in i or ":" in i:
        return "is a path, not an image id; ids name files inside the VOC tree"
    return None


# Long by design: one linear pass (layout, split files, boxes, image checks, samples) whose
# steps each read the previous one's tables; every branch is a named skip reason or a UserError.
def load(path: str | None, *, n: int | None = None, seed: int = 0, cache_dir: Path,
         progress: ProgressFn | None = None, year=None, image_set: str = "trainval",
         classes=VOC_CLASSES, single_object: bool = False, include_difficult: bool = False,
         verify: bool = True, workers: int | None = None, box_measure: str = "visible",
         **unknown) -> Dataset:
    """Load ``voc:PATH``.

    Args:
        path: the folder holding ``VOCdevkit`` (torchvision's ``root``), or below it.
        n, seed: unused here (the registry keeps a stratified subset of ``n`` afterwards).
        cache_dir: where image checks are cached.
        progress: optional ``progress(fraction, message)``.
        year: ``2007`` or ``2012``; needed only when both are present.
        image_set: ``train``, ``val``, ``trainval`` (default) or ``test``.
        classes: class names (list or comma-separated); default all 20.
        single_object: keep only images holding exactly one object of the class (difficult
            ones included in the count).
        include_difficult: also measure boxes flagged ``difficult`` (default False).
        verify: decode every image once (cached) to skip truncated or broken files.
        workers: processes for the checks (default: all cores).
        box_measure: what the scan regresses: ``visible`` (default) = the largest box's area
            inside the network's centre crop / the crop's area, for the scanned weights'
            resize and crop (what the network sees); ``image`` = box area / image area (the
            loader's measure, right for a pipeline that resizes the whole image, as the
            paper's Keras one). The samples' measure is the image fraction either way; the
            boxes and image size are recorded in ``info["box_geometry"]``.
    """
    reject_unknown("voc", load, unknown)
    box_measure = check_box_measure("voc", box_measure)
    if path is None:
        raise DatasetError(f"voc needs a path: --dataset voc:PATH, with {LAYOUT}.")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetError(f"voc: {root} is not a folder. Expected {LAYOUT}.")
    year_dir = find_year_dir(root, year)
    wanted = as_list(classes)
    for c in wanted:
        if c not in VOC_CLASSES:
            raise DatasetError(f"voc: unknown class {c!r}.{closest(c, VOC_CLASSES)} Valid: "
                               f"{', '.join(VOC_CLASSES)}.")
    main = year_dir / "ImageSets" / "Main"
    set_file = main / f"{image_set}.txt"
    if not set_file.is_file():
        have = sorted(p.stem for p in main.glob("*.txt") if "_" not in p.stem) \
            if main.is_dir() else []
        raise DatasetError(f"voc: image set {set_file} not found; available in {main}: "
                           f"{', '.join(have) or 'none'}. Choose with --opt image_set=NAME.")
    ids = _read_ids(set_file)
    split_of: dict[str, str] = {}
    if image_set in ("train", "val", "test"):
        split_of = {i: image_set for i in ids}
    elif image_set == "trainval":
        for s in ("train", "val"):
            if (main / f"{s}.txt").is_file():
                split_of.update({i: s for i in _read_ids(main / f"{s}.txt")})

    skipped: list[Skipped] = []

    def skip(p, reason):
        warnings.warn(f"Skipping {p}: {reason}", stacklevel=3)
        skipped.append(Skipped(str(p), reason))

    rows = []   # (image, id, class, fraction-args)
    for i in ids:
        if _bad_id(i):
            skip(set_file, f"an id listed in {set_file.name} {_bad_id(i)}")
            continue
        xml = year_dir / "Annotations" / f"{i}.xml"
        img = year_dir / "JPEGImages" / f"{i}.jpg"
        if not xml.is_file():
            skip(xml, f"annotation of image {i} (listed in {set_file.name}) is missing")
            continue
        if not img.is_file():
            skip(img, f"image {i} (listed in {set_file.name}) is missing")
            continue
        try:
            ann = parse_voc_xml(xml)
        except AnnotationError as e:
            skip(xml, str(e))
            continue
        for c in wanted:
            all_c = [b for b in ann.boxes if b.name == c]
            if not all_c or (single_object and len(all_c) != 1):
                continue
            boxes = all_c if include_difficult else [b for b in all_c if not b.difficult]
            if boxes:
                rows.append((str(img.resolve()), i, c, ann, boxes))
    checks = check_images(sorted({r[0] for r in rows}), cache_dir, decode=bool(verify),
                          workers=workers, progress=progress)
    samples = []
    geometry = {}   # (path, label) -> (width, height, boxes): the scan's visible measure
    bad_images = set()
    for img, i, c, ann, boxes in rows:
        reason, w, h = checks[img]
        if reason:
            if img not in bad_images:
                skip(img, reason)
                bad_images.add(img)
            continue
        aw, ah = (ann.width, ann.height) if ann.width > 0 and ann.height > 0 else (w, h)
        try:
            frac = largest_box_fraction(boxes, aw, ah)
        except AnnotationError as e:
            skip(img, str(e))
            continue
        if frac:
            samples.append(Sample(path=img, measure=frac, label=c, group=i,
                                  split=split_of.get(i)))
            geometry[(img, c)] = (aw, ah, tuple((b.xmin, b.ymin, b.xmax, b.ymax) for b in boxes))
    return Dataset(name=f"voc:{path}", kind="voc", measure_name="box_area_fraction",
                   samples=tuple(samples), skipped=tuple(skipped), label_name="class",
                   label_order=tuple(wanted),
                   info={"year_dir": str(year_dir), "image_set": image_set,
                         "single_object": bool(single_object), "box_measure": box_measure,
                         "box_geometry": geometry})
