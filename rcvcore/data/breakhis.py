"""``breakhis:PATH``: the BreakHis breast-cancer histology set as distributed.

Expected layout (any folder above it): ``.../benign|malignant/SOB/<tumour type>/<patient>/<mag>X/
*.png``, e.g. ``benign/SOB/adenosis/SOB_B_A_14-22549AB/40X/SOB_B_A-14-22549AB-40-001.png``.

Label: the magnification class ``40x``, ``100x``, ``200x``, ``400x`` (default), or with
``label=tumour_type`` the tumour type (``adenosis`` ... ``papillary_carcinoma``), or with
``label=class`` benign / malignant. Measure: the magnification as a number (40 ... 400).
Group: the patient id (the part of the patient folder after its last ``_``, e.g. ``14-22549AB``,
so a patient filed under two tumour types is still one group). Splits are fixed by patient with a
fixed seed, separately within benign and malignant patients so each split holds both.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

from .._shared import ProgressFn, closest
from .._utils import as_list
from ..errors import SkippedFile
from .base import Dataset, DatasetError, Sample, Skipped
from .checks import check_images
from .options import reject_unknown
from .splits import split_groups

LAYOUT = (".../benign|malignant/SOB/<tumour type>/<patient>/<mag>X/*.png, e.g. "
          "benign/SOB/adenosis/SOB_B_A_14-22549AB/40X/SOB_B_A-14-22549AB-40-001.png "
          "(BreakHis as distributed)")
MAGNIFICATIONS = (40, 100, 200, 400)
MAG_ORDER = tuple(f"{m}x" for m in MAGNIFICATIONS)
TUMOUR_TYPES = ("adenosis", "fibroadenoma", "phyllodes_tumor", "tubular_adenoma",
                "ductal_carcinoma", "lobular_carcinoma", "mucinous_carcinoma",
                "papillary_carcinoma")
LABELS = {"magnification": "magnification", "tumour_type": "tumour_type",
          "tumor_type": "tumour_type", "type": "tumour_type", "class": "class"}
_MAG_DIR = re.compile(r"^(\d+)[xX]$")
_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


# Long by design: one linear pass over the BreakHis layout (folders -> patients ->
# magnifications -> checks -> samples); the branches are skip reasons and UserErrors.
def load(path: str | None, *, n: int | None = None, seed: int = 0, cache_dir: Path,
         progress: ProgressFn | None = None, label: str = "magnification",
         magnifications=MAGNIFICATIONS, split_seed: int = 0,
         split_fractions=(0.6, 0.2, 0.2), verify: bool = True,
         workers: int | None = None, **unknown) -> Dataset:
    """Load ``breakhis:PATH``.

    Args:
        path: the BreakHis folder (``BreaKHis_v1`` or any folder above ``benign``/``malignant``).
        n, seed: unused here (the registry keeps a stratified subset of ``n`` afterwards).
        cache_dir: where image checks are cached.
        progress: optional ``progress(fraction, message)``.
        label: ``magnification`` (default), ``tumour_type`` or ``class`` (benign/malignant).
        magnifications: keep only these (default 40, 100, 200, 400).
        split_seed: seed of the patient split (fixed, 0, by default).
        split_fractions: train/val/test fractions of patients.
        verify: decode every image once (cached) to skip truncated or broken files; False only
            checks that files are non-empty images by their header.
        workers: processes for the checks (default: all cores).
    """
    reject_unknown("breakhis", load, unknown)
    if path is None:
        raise DatasetError(f"breakhis needs a path: --dataset breakhis:PATH, with {LAYOUT}.")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetError(f"breakhis: {root} is not a folder. Expected {LAYOUT}.")
    label_key = LABELS.get(str(label).lower())
    if label_key is None:
        raise DatasetError(f"breakhis: unknown label {label!r}.{closest(str(label), LABELS)} "
                           "Choose magnification, tumour_type or class (--opt label=...).")
    try:
        mags = {int(str(m).lower().rstrip("x")) for m in as_list(magnifications)}
    except ValueError:
        raise DatasetError(f"breakhis: magnifications must be numbers among 40, 100, 200, 400; "
                           f"got {magnifications!r}.") from None

    rows = []   # (path, mag, tumour class, tumour type, patient)
    for mag_dir in sorted(root.rglob("*")):
        m = _MAG_DIR.match(mag_dir.name)
        if not m or not mag_dir.is_dir():
            continue
        full = mag_dir.parts
        if len(full) < 5 or full[-4].upper() != "SOB" or full[-5].lower() not in ("benign",
                                                                                "malignant"):
            continue
        mag = int(m.group(1))
        if mag not in mags:
            continue
        patient_dir, ttype, tclass = full[-2], full[-3].lower(), full[-5].lower()
        patient = patient_dir.rsplit("_", 1)[-1]
        for f in sorted(mag_dir.iterdir()):
            if f.is_file() and f.suffix.lower() in _SUFFIXES:
                rows.append((str(f.resolve()), mag, tclass, ttype, patient))
    if not rows:
        raise DatasetError(f"breakhis: no image found under {root} in the BreakHis layout. "
                           f"Expected {LAYOUT}.")

    checks = check_images([r[0] for r in rows], cache_dir, decode=bool(verify), workers=workers,
                          progress=progress)
    skipped = []
    good = []
    for r in rows:
        reason = checks[r[0]][0]
        if reason:
            warnings.warn(f"skipped {r[0]}: {reason}", SkippedFile, stacklevel=2)
            skipped.append(Skipped(r[0], reason))
        else:
            good.append(r)

    splits: dict[str, str] = {}
    for tclass in ("benign", "malignant"):
        patients = sorted({r[4] for r in good if r[2] == tclass} - set(splits))
        splits.update(split_groups(patients, int(split_seed),
                                   tuple(float(f) for f in as_list(split_fractions))))
    samples = []
    for p, mag, tclass, ttype, patient in good:
        lab = {"magnification": f"{mag}x", "tumour_type": ttype, "class": tclass}[label_key]
        samples.append(Sample(path=p, measure=float(mag), label=lab, group=patient,
                              split=splits[patient]))
    order = {"magnification": MAG_ORDER, "tumour_type": TUMOUR_TYPES,
             "class": ("benign", "malignant")}[label_key]
    return Dataset(name=f"breakhis:{path}", kind="breakhis", measure_name="magnification",
                   samples=tuple(samples), skipped=tuple(skipped), label_name=label_key,
                   label_order=order,
                   info={"n_patients": len({r[4] for r in good}), "split_seed": int(split_seed)},
                   pooled_by_default=label_key == "magnification")
