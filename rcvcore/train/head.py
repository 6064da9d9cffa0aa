"""The head's closed-form start: the scan's RCV fit, refitted on the run's training split.

At every layer the scan fits a ridge regression from globally average-pooled activations to the
measure. Cut at that layer, the pruned model's new head is the same linear map on the same pooled
features, so ``head_init="rcv"`` computes the pooled features at the cut of the run's *training*
images (through the run's own trunk and input transform, in eval mode), fits
:class:`rcvcore.rcv.RCV` on them (ridge, penalty chosen by leave-one-group-out on the training
split alone: no validation or test image is seen) and writes its coefficients into the head.

- Regression: the fit targets the head's own output scale, ``(area - target_mean) /
  target_std`` (the raw area under ``--protocol paper``), so the model predicts the fit's areas
  before its first step.
- Classification: one ridge per class on the class indicators (a least-squares linear
  classifier, whose largest output is the predicted class).

Pooled features are cached in the activation store (``<cache>/activations``, keys
``head-features:``, cleared with ``cache --clear activations``) under the weights' fingerprint,
the cut, the input transform and every image's path, size and mtime: runs over several seeds on
one trunk extract once, and a head-only run (``--trainable head``, trunk frozen and in eval
mode) trains its head on the cached features without a forward pass of the trunk, which is the
same computation.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..cache import Store
from ..data.base import file_fingerprint
from ..errors import UserError
from ..rcv import RCV
from ..runs import RunCancelled
from .data import ImageSet, Task

#: Bump when the pooling or the key changes, so old features are never reused.
FEATURES_VERSION = 1
FEATURES_PREFIX = "head-features:"


class FeatureSet(torch.utils.data.Dataset):
    """Pooled features at the cut with the targets of an :class:`ImageSet` (same order, same
    ``paths``, ``targets`` and ``labels``): what a head-only run trains and evaluates on."""

    def __init__(self, features: np.ndarray, images: ImageSet):
        self.features = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        self.paths, self.targets, self.labels = images.paths, images.targets, images.labels

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.features[i], self.targets[i]


def features_key(backbone_fingerprint: str, cut_node: str, transform, paths) -> str:
    """Cache key of the pooled features of ``paths`` at ``cut_node`` of one trunk."""
    raw = json.dumps({"v": FEATURES_VERSION, "weights": backbone_fingerprint, "cut": cut_node,
                      "transform": transform.fingerprint, "images": file_fingerprint(paths)},
                     sort_keys=True)
    return FEATURES_PREFIX + hashlib.sha256(raw.encode()).hexdigest()[:40]


@torch.no_grad()
def pooled_features(model, images: ImageSet, *, device, batch_size: int = 32,
                    channels_last: bool = True, amp: bool = False, workers: int = 0,
                    stop: Callable[[], bool] | None = None) -> np.ndarray:
    """``model.features`` (the pooled map at the cut) of every image, in eval mode (the
    previous mode is restored): an ``(n, n_features)`` float32 array."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    out = []
    loader = torch.utils.data.DataLoader(images, batch_size=batch_size, shuffle=False,
                                         num_workers=workers)
    try:
        for x, _ in loader:
            if stop and stop():
                raise RunCancelled("cancelled while extracting the head's features")
            x = x.to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                f = model.features(x)
            out.append(f.float().cpu().numpy())
    finally:
        model.train(was_training)
    n_features = int(model.head.in_features)
    return np.concatenate(out) if out else np.zeros((0, n_features), np.float32)


def cached_features(model, images: ImageSet, key: str | None, store: Store | None,
                    **kwargs) -> tuple[np.ndarray, bool]:
    """:func:`pooled_features`, read from / written to ``store`` under ``key`` (no cache when
    either is None). Returns ``(features, hit)``; a stored value of the wrong shape is
    recomputed."""
    if store is not None and key is not None:
        value = store.get(key)
        if (isinstance(value, np.ndarray) and value.ndim == 2 and len(value) == len(images)
                and value.shape[1] == model.head.in_features and np.isfinite(value).all()):
            return value.astype(np.float32, copy=False), True
    feats = pooled_features(model, images, **kwargs)
    if store is not None and key is not None:
        store.put(key, feats)
    return feats, False


def fit_head(model, features: np.ndarray, images: ImageSet, task: Task,
             groups=None) -> dict:
    """Set ``model.head`` to the ridge fit from ``features`` to the targets of ``images`` (the
    run's training split); ``groups`` makes the penalty search leave whole groups out.

    Returns:
        What was fitted, for ``config``/``result.json``: ``{"method": "rcv", "n", "alpha"
        (per output), "train_r2" (per output, on the training split itself)}``.

    Raises:
        UserError: fewer than 3 training images.
    """
    X = np.asarray(features, np.float64)
    if len(X) < 3:
        raise UserError(f"--head-init rcv needs at least 3 training images, got {len(X)}; "
                        "use --head-init random or a larger --n.")
    if groups is not None and len(set(np.asarray(groups).tolist())) < 3:
        groups = None    # leave-one-group-out needs groups to leave out
    if task.kind == "regression":
        y = (np.asarray(images.targets, np.float64) - task.target_mean) / task.target_std
        columns = [y]
    else:
        t = np.asarray(images.targets, int)
        columns = [(t == k).astype(np.float64) for k in range(task.n_outputs)]
    weight = np.zeros((len(columns), X.shape[1]))
    bias = np.zeros(len(columns))
    alphas, r2 = [], []
    for k, y in enumerate(columns):
        if np.ptp(y) == 0:     # a class absent from the training split: constant output
            bias[k] = float(y[0])
            alphas.append(None)
            r2.append(None)
            continue
        est = RCV("ridge").fit(X, y, groups=groups)
        weight[k], bias[k] = est.coef_, est.intercept_
        alphas.append(float(est.alpha_))
        r2.append(float(est.score(X, y)))
    head = model.head
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(weight, dtype=head.weight.dtype))
        head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))
    return {"method": "rcv", "n": int(len(X)), "alpha": alphas, "train_r2": r2}


def head_store(cache_root) -> Store:
    """The store of pooled head features (the scan's activation store)."""
    return Store(Path(cache_root) / "activations")
