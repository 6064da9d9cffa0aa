"""The ground floor: names and small records that several layers share.

Imports only the standard library and NumPy (``torch`` only inside :func:`resolve_device`), so a
module that needs the cut name of the full network, a "did you mean" hint or the record of
extracted activations does not import torchvision for it. Nothing in rcvcore sits below this
module except :mod:`rcvcore.errors`.
"""
from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import UserError

#: The cut that keeps the whole convolutional trunk (the full network of Table 2); ``"full"``
#: and ``""`` are accepted on input and mean the same.
NONE = "none"
#: the scan's controls (:mod:`rcvcore.scan`) and its rules of the suggested cut: ``peak`` (the
#: paper's: the peak of mean R² among layers significantly above the controls), ``within-std``
#: (the last of those layers whose mean R² stays within one std of that peak: cuts deeper) or
#: ``earliest-plateau`` (the earliest of those layers not significantly below the peak,
#: :mod:`rcvcore.plateau`: prunes the most). Here so that ``--help`` needs no torch.
CONTROLS = ("shuffled", "random-weights")
CUT_RULES = ("peak", "within-std", "earliest-plateau")
#: the demo model's cut and training settings (:mod:`rcvcore.demo`); 112 px is demo-he's patch
#: size, so patches are fed as they are. DEMO_CUT is what ``rcvcore.demo.demo_model_cut``
#: derives (``python -m rcvcore demo cut``; tests/test_demo.py checks it): the demo-he scan
#: without the demo model's own test source images has no significant layer, so the cut is its
#: highest mean R² by the fallback rule ``untested-peak`` (block3.0, the earlier constant, was
#: chosen by a scan that saw the test patches)
DEMO_CUT = "block2.1"
DEMO_SETTINGS = {"epochs": 5, "batch_size": 32, "lr": 1e-4, "image_size": 112}

ProgressFn = Callable[[float, str], None]
"""Optional progress callback: ``progress(fraction_done, message)``."""


def closest(name: str, choices, n: int = 3) -> str:
    """A ' Did you mean ...?' hint listing the closest valid names, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.4)
    return f" Did you mean {', '.join(map(repr, close))}?" if close else ""


def resolve_device(device: str = "auto"):
    """``auto`` picks CUDA, then MPS, then CPU; anything else is passed to ``torch.device``.

    Returns:
        A ``torch.device``.
    """
    import torch  # on call: the modules that only name devices stay free of torch

    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r} is not a device; use auto, cpu, cuda, cuda:1 "
                        "or mps.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine; use "
                        "--device auto or cpu.")
    return dev


@dataclass(frozen=True)
class Extraction:
    """Pooled activations of a list of images, per layer, and which images could be read.

    The one record of extracted activations: :func:`rcvcore._extract.extract` returns it, the
    :class:`rcvcore._cache.ActivationCache` stores it (one entry per layer, each with the ok /
    failed record) and the scan scores it. Row ``j`` of every ``features[layer]`` is image
    ``ok[j]``.
    """

    features: dict[str, np.ndarray]        # layer -> (n_ok, n_channels) float32
    ok: np.ndarray                         # indices (into the input paths) of readable images
    failed: tuple[tuple[int, str], ...]    # (index, reason) of unreadable images

    def same_images(self, other: Extraction) -> bool:
        """Whether ``other`` has the same readable and failed images (so their rows align)."""
        return (np.array_equal(np.asarray(self.ok, dtype=int), np.asarray(other.ok, dtype=int))
                and sorted(i for i, _ in self.failed) == sorted(i for i, _ in other.failed))

    def merged(self, other: Extraction) -> Extraction:
        """The layers of both (``other``'s win on a name clash); they must be of the same
        images (:meth:`same_images`)."""
        if not self.same_images(other):
            raise ValueError("cannot merge activations of different readable images")
        return Extraction({**self.features, **other.features}, self.ok, self.failed)
