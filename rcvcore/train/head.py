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
- Classification: the scan has no classifier to reuse, so the head starts where a frozen-trunk
  linear probe ends: a multinomial logistic regression (L2, ``C=1`` on standardised features,
  folded back into the head's weights), the optimum of the head's own cross-entropy with the
  trunk fixed. Fine-tuning from a fitted probe rather than a random head is "LP-FT" (Kumar et
  al., ICLR 2022), which keeps the pretrained features from being distorted by a random head's
  first gradients. (A ridge fit on class indicators, tried first, shrinks towards the majority
  class on small unbalanced sets: every demo-he test patch became 20x.)

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
from sklearn.linear_model import LogisticRegression

from .._cache import Store
from ..data.base import file_fingerprint
from ..errors import UserError
from ..rcv import RCV
from ..runs.directory import RunCancelled
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
    """Set ``model.head`` to its fit from ``features`` to the targets of ``images`` (the run's
    training split): ridge for regression (``groups`` makes the penalty search leave whole
    groups out), logistic regression for classification.

    Returns:
        What was fitted, for ``result.json``: ``{"method": "rcv", "fit": "ridge" | "logistic",
        "n", ...}`` with ``alpha`` and ``train_r2`` (ridge) or ``C`` and ``train_accuracy``
        (logistic), on the training split itself.

    Raises:
        UserError: fewer than 3 training images.
    """
    X = np.asarray(features, np.float64)
    if len(X) < 3:
        raise UserError(f"--head-init rcv needs at least 3 training images, got {len(X)}; "
                        "use --head-init random or a larger --n.")
    if groups is not None and len(set(np.asarray(groups).tolist())) < 3:
        groups = None    # leave-one-group-out needs groups to leave out
    if task.kind == "classification":
        return _fit_logistic(model, X, np.asarray(images.targets, int), task.n_outputs)
    y = (np.asarray(images.targets, np.float64) - task.target_mean) / task.target_std
    if np.ptp(y) == 0:      # one value: the head predicts it
        _set_head(model.head, np.zeros((1, X.shape[1])), np.array([float(y[0])]))
        return {"method": "rcv", "fit": "constant", "n": int(len(X))}
    est = RCV("ridge").fit(X, y, groups=groups)
    _set_head(model.head, est.coef_[None, :], np.array([est.intercept_]))
    return {"method": "rcv", "fit": "ridge", "n": int(len(X)), "alpha": [float(est.alpha_)],
            "train_r2": [float(est.score(X, y))]}


LOGISTIC_C = 1.0


def _fit_logistic(model, X: np.ndarray, t: np.ndarray, n_classes: int) -> dict:
    """The head as a multinomial logistic regression on standardised features (see the module
    docstring); classes absent from the training split get a very negative bias."""
    present = np.unique(t)
    mu, sd = X.mean(axis=0), X.std(axis=0)
    sd[sd == 0] = 1.0
    weight = np.zeros((n_classes, X.shape[1]))
    bias = np.full(n_classes, -30.0)
    if len(present) == 1:
        bias[present[0]] = 0.0
    else:
        est = LogisticRegression(C=LOGISTIC_C, max_iter=5000).fit((X - mu) / sd, t)
        coef, icpt = est.coef_, est.intercept_
        if len(present) == 2:          # scikit-learn's binary form: one row for class 1
            coef, icpt = np.vstack([-coef / 2, coef / 2]), np.array([-icpt[0] / 2, icpt[0] / 2])
        for row, k in enumerate(est.classes_):
            weight[k] = coef[row] / sd
            bias[k] = icpt[row] - float(coef[row] @ (mu / sd))
    _set_head(model.head, weight, bias)
    pred = np.argmax(X @ weight.T + bias, axis=1)
    return {"method": "rcv", "fit": "logistic", "C": LOGISTIC_C, "n": int(len(X)),
            "train_accuracy": float(np.mean(pred == t))}


def _set_head(head, weight: np.ndarray, bias: np.ndarray) -> None:
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(weight, dtype=head.weight.dtype))
        head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))


def head_store(cache_root) -> Store:
    """The store of pooled head features (the scan's activation store)."""
    return Store(Path(cache_root) / "activations")
