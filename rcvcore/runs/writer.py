"""What the training process writes into its run directory besides the checkpoint."""
from __future__ import annotations

import json
import time
from pathlib import Path

from .._files import atomic_path, json_safe, write_json
from .config import TrainConfig
from .directory import CONFIG, METRICS, RESULT, STATUS, read_metrics


class RunWriter:
    """Everything the training process writes into its run directory besides the checkpoint.

    ``enabled=False`` (the other ranks of a DDP run) makes every method a no-op, so one process
    alone writes.
    """

    def __init__(self, run_dir, enabled: bool = True):
        self.dir, self.enabled = Path(run_dir), enabled
        self.status: dict = {}

    def write_config(self, config: TrainConfig, version: str) -> None:
        if self.enabled:
            write_json(self.dir / CONFIG, {**config.to_dict(), "rcvcore_version": version})
            (self.dir / METRICS).write_text("")

    def write_status(self, **kw) -> None:
        if not self.enabled:
            return
        self.status.update(kw, updated_at=time.time())
        write_json(self.dir / STATUS, self.status)

    def write_result(self, result: dict) -> None:
        if self.enabled:
            write_json(self.dir / RESULT, result)

    def log(self, record: dict, on_record=None) -> None:
        if not self.enabled:
            return
        record = json_safe({**record, "time": time.time()})
        with open(self.dir / METRICS, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
        if on_record:
            on_record(record)

    def truncate_metrics(self, global_step: int, epochs_done: int) -> None:
        """Drop the records logged after the checkpoint we resume from."""
        if not self.enabled:
            return
        keep = [m for m in read_metrics(self.dir)
                if (m.get("kind") == "epoch" and m.get("epoch", 0) <= epochs_done)
                or (m.get("kind") != "epoch" and m.get("global_step", 0) <= global_step)]
        atomic_path(self.dir / METRICS, lambda tmp: tmp.write_text(
            "".join(json.dumps(m) + "\n" for m in keep)))
