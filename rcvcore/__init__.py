"""rcvcore: scale-covariance scans (Regression Concept Vectors), pruning and transfer of CNNs.

Implements Graziani et al., "Interpretable CNN Pruning for Preserving Scale-Covariant Features in
Medical Imaging" (iMIMIC 2020) and "On the Scale Invariance in State of the Art CNNs Trained on
ImageNet" (MAKE 2021). Importing rcvcore never imports streamlit.

The public API (each name is imported on first use, so ``import rcvcore`` stays instant)::

    import rcvcore
    scan = rcvcore.run_scan(rcvcore.ScanConfig(arch="resnet18", weights="random"))
    layer, why = scan.suggest_cut()
    run = rcvcore.train(rcvcore.TrainConfig(arch="resnet18", weights="random", cut=layer),
                        "runs/resnet18-cut")

``rcvcore.train``, ``rcvcore.compare`` and ``rcvcore.predict`` are both the modules and their
entry points (calling the module calls the function of the same name); ``rcvcore.prune`` is the
module whose ``prune(model, arch, cut)`` cuts a network.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it (a module itself when the name is the module)
_EXPORTS = {
    # architectures and probe layers
    "list_models": "rcvcore.models", "list_layers": "rcvcore.models",
    "Backbone": "rcvcore.models", "resolve_backbone": "rcvcore.models",
    # datasets
    "list_datasets": "rcvcore.data", "load_dataset": "rcvcore.data", "Dataset": "rcvcore.data",
    # the scan and the RCV estimator
    "ScanConfig": "rcvcore.scan", "ScanResult": "rcvcore.scan", "run_scan": "rcvcore.scan",
    "RCV": "rcvcore.rcv", "LayerScore": "rcvcore.rcv", "score_layers": "rcvcore.rcv",
    # pruning
    "build_pruned": "rcvcore.prune", "cut_summary": "rcvcore.prune",
    # fine-tuning runs
    "TrainConfig": "rcvcore.runs.config", "Task": "rcvcore.train.data",
    "RunResult": "rcvcore.runs.directory", "RunState": "rcvcore.runs.directory",
    "read_run": "rcvcore.runs.directory", "find_runs": "rcvcore.runs.directory",
    "launch": "rcvcore.runs.process", "cancel": "rcvcore.runs.process",
    "Scheduler": "rcvcore.runs.scheduler",
    "Comparison": "rcvcore.comparison", "load_run_model": "rcvcore.predict",
    "predict_files": "rcvcore.predict", "Prediction": "rcvcore.predict",
    "UserError": "rcvcore.errors",
}
# entry points that are also modules: rcvcore.train is the package and callable as train()
_MODULES = {"train": "rcvcore.train", "compare": "rcvcore.compare",
            "predict": "rcvcore.predict", "prune": "rcvcore.prune"}

__all__ = sorted([*_EXPORTS, *_MODULES, "__version__"])


def __getattr__(name: str):
    # lazy re-export (PEP 562): `import rcvcore` must not import torch (CLI start-up, app)
    if name in _MODULES:
        return importlib.import_module(_MODULES[name])
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rcvcore' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
