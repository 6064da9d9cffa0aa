"""``imagenet:PATH``: ImageNet class folders with the ILSVRC bounding-box XML files.

Expected layout: ``PATH/<wnid>/*.JPEG`` (e.g. ``n02058221/n02058221_1234.JPEG``) with the box
annotations either next to the images (``<wnid>/<stem>.xml``), in ``PATH/Annotation/<wnid>/``, or
under a separate root given with ``annotations=DIR`` (``DIR/<wnid>/<stem>.xml`` or
``DIR/<stem>.xml``). The Kaggle ILSVRC layout (``ILSVRC/Data/CLS-LOC/train`` with
``ILSVRC/Annotations/CLS-LOC/train``) is recognised from its root.

Measure (``box_area_fraction``): the area of the object's bounding box divided by the image area,
using the **largest** box of the class when the image holds several. The scan regresses, by
default, the box area the network sees (inside the weights' centre crop) over the crop's area
(``box_measure=visible``; see :mod:`rcvcore.data.boxes`). Label: the WordNet id.
Images without a box are skipped and counted. No split is fixed (the RCV draws its own).
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

from .._shared import ProgressFn, closest
from .._utils import as_list
from ..errors import Notice
from .base import Dataset, DatasetError, Sample, Skipped
from .boxes import AnnotationError, check_box_measure, largest_box_fraction, parse_voc_xml
from .checks import check_images
from .options import reject_unknown

PAPER_WNIDS = ("n02058221", "n01608432", "n04037443")   # albatross, kite (bird), race car
LAYOUT = ("PATH/<wnid>/*.JPEG class folders (e.g. n02058221/n02058221_1234.JPEG) with the ILSVRC "
          "bounding-box files <stem>.xml next to the images, in PATH/Annotation/<wnid>/, or under "
          "a root given with --opt annotations=DIR")
_WNID = re.compile(r"^n\d{8}$")
_SUFFIXES = {".jpeg", ".jpg", ".png"}


def _resolve_roots(root: Path, annotations) -> tuple[Path, list[Path]]:
    """The folder holding the wnid folders, and the annotation roots to search."""
    ann_roots = [Path(annotations).expanduser()] if annotations else []
    kaggle = root / "Data" / "CLS-LOC" / "train"
    if not kaggle.is_dir() and (root / "ILSVRC" / "Data" / "CLS-LOC" / "train").is_dir():
        root = root / "ILSVRC"
        kaggle = root / "Data" / "CLS-LOC" / "train"
    if kaggle.is_dir():
        ann_roots.append(root / "Annotations" / "CLS-LOC" / "train")
        return kaggle, ann_roots
    if not any(_WNID.match(p.name) for p in root.iterdir() if p.is_dir()) and \
            (root / "train").is_dir():
        root = root / "train"
    for name in ("Annotation", "Annotations", "bbox", "annotations"):
        if (root / name).is_dir():
            ann_roots.append(root / name)
        if (root.parent / name).is_dir():
            ann_roots.append(root.parent / name)
    return root, ann_roots


# Long by design: one linear pass (layout, classes, boxes, image checks, samples) whose steps
# each read the previous one's tables; every branch is a named skip reason or a UserError.
def load(path: str | None, *, n: int | None = None, seed: int = 0, cache_dir: Path,
         progress: ProgressFn | None = None, classes=PAPER_WNIDS, annotations=None,
         verify: bool = True, workers: int | None = None, box_measure: str = "visible",
         **unknown) -> Dataset:
    """Load ``imagenet:PATH``.

    Args:
        path: the folder of ``<wnid>`` class folders (or the Kaggle ``ILSVRC`` root).
        n, seed: unused here (the registry keeps a stratified subset of ``n`` afterwards).
        cache_dir: where image checks are cached.
        progress: optional ``progress(fraction, message)``.
        classes: WordNet ids (list or comma-separated); default the paper's three
            (n02058221 albatross, n01608432 kite, n04037443 race car); ``all`` for every class
            folder present.
        annotations: a separate root of the XML files (``DIR/<wnid>/<stem>.xml`` or
            ``DIR/<stem>.xml``).
        verify: decode every image once (cached) to skip truncated or broken files.
        workers: processes for the checks (default: all cores).
        box_measure: what the scan regresses: ``visible`` (default) = the largest box's area
            inside the network's centre crop / the crop's area, for the scanned weights'
            resize and crop (what the network sees); ``image`` = box area / image area (the
            loader's measure, right for a pipeline that resizes the whole image, as the
            paper's Keras one). The samples' measure is the image fraction either way; the
            boxes and image size are recorded in ``info["box_geometry"]``.
    """
    reject_unknown("imagenet", load, unknown)
    box_measure = check_box_measure("imagenet", box_measure)
    if path is None:
        raise DatasetError(f"imagenet needs a path: --dataset imagenet:PATH, with {LAYOUT}.")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetError(f"imagenet: {root} is not a folder. Expected {LAYOUT}.")
    if annotations and not Path(annotations).expanduser().is_dir():
        raise DatasetError(f"imagenet: annotations folder {annotations} does not exist.")
    img_root, ann_roots = _resolve_roots(root, annotations)
    present = sorted(p.name for p in img_root.iterdir() if p.is_dir() and _WNID.match(p.name))
    if not present:
        raise DatasetError(f"imagenet: no WordNet-id class folder (like n02058221) in {img_root}."
                           f" Expected {LAYOUT}.")
    wanted = present if (isinstance(classes, str) and classes.strip().lower() == "all") \
        else as_list(classes)
    bad = [w for w in wanted if not _WNID.match(w)]
    if bad:
        raise DatasetError(f"imagenet: {bad[0]!r} is not a WordNet id (like n02058221); "
                           f"--opt classes=n02058221,n01608432 or classes=all.")
    missing = [w for w in wanted if w not in present]
    if missing:
        raise DatasetError(
            f"imagenet: class folder(s) {', '.join(missing)} not found in {img_root}."
            f"{closest(missing[0], present)} Present: {', '.join(present[:12])}"
            f"{' ...' if len(present) > 12 else ''}. Choose with --opt classes=WNID,WNID or "
            f"classes=all.")

    rows = []   # (image, wnid, xml or None)
    for wnid in wanted:
        for f in sorted((img_root / wnid).iterdir()):
            if not (f.is_file() and f.suffix.lower() in _SUFFIXES):
                continue
            candidates = [f.with_suffix(".xml")]
            for a in ann_roots:
                candidates += [a / wnid / f"{f.stem}.xml", a / f"{f.stem}.xml"]
            xml = next((c for c in candidates if c.is_file()), None)
            rows.append((str(f.resolve()), wnid, xml))
    if not rows:
        raise DatasetError(f"imagenet: no .JPEG image in the class folder(s) "
                           f"{', '.join(wanted)} of {img_root}. Expected {LAYOUT}.")

    skipped: list[Skipped] = []
    no_box = 0

    def skip(p, reason):
        warnings.warn(f"Skipping {p}: {reason}", stacklevel=3)
        skipped.append(Skipped(str(p), reason))

    parsed = []
    for img, wnid, xml in rows:
        if xml is None:
            no_box += 1
            skipped.append(Skipped(img, "no bounding-box annotation (<stem>.xml) found"))
            continue
        try:
            ann = parse_voc_xml(xml)
        except AnnotationError as e:
            skip(xml, f"annotation of {Path(img).name}: {e}")
            continue
        boxes = [b for b in ann.boxes if b.name == wnid]
        if not boxes:
            no_box += 1
            skipped.append(Skipped(img, f"{Path(xml).name} holds no box of class {wnid}"))
            continue
        parsed.append((img, wnid, ann, boxes))
    checks = check_images([r[0] for r in parsed], cache_dir, decode=bool(verify),
                          workers=workers, progress=progress)
    samples = []
    geometry = {}   # (path, label) -> (width, height, boxes): the scan's visible measure
    for img, wnid, ann, boxes in parsed:
        reason, w, h = checks[img]
        if reason:
            skip(img, reason)
            continue
        # boxes are in the annotation's frame: use its size, the file's when it gives none
        aw, ah = (ann.width, ann.height) if ann.width > 0 and ann.height > 0 else (w, h)
        try:
            frac = largest_box_fraction(boxes, aw, ah)
        except AnnotationError as e:
            skip(img, str(e))
            continue
        if not frac:
            skip(img, "its boxes lie outside the image")
            continue
        samples.append(Sample(path=img, measure=frac, label=wnid, group=Path(img).stem))
        geometry[(img, wnid)] = (aw, ah, tuple((b.xmin, b.ymin, b.xmax, b.ymax) for b in boxes))
    if no_box:
        warnings.warn(f"imagenet: {no_box} image(s) without a bounding box were skipped.",
                      Notice, stacklevel=2)
    return Dataset(name=f"imagenet:{path}", kind="imagenet", measure_name="box_area_fraction",
                   samples=tuple(samples), skipped=tuple(skipped), label_name="wnid",
                   label_order=tuple(wanted),
                   info={"n_without_box": no_box, "box_rule": "largest box of the class / "
                         "image area", "box_measure": box_measure, "box_geometry": geometry})
