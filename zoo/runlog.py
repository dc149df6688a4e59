"""Everything a run writes besides checkpoints: the run dir, config.yaml, TensorBoard events, metrics.json,
sample images and the hyper-parameter summary. Under torchrun only rank 0 writes; other ranks hold a RunLog
that keeps the same bookkeeping and writes nothing.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from . import visuals as vis
from .config import dump
from .errors import ZooError


class _NoWriter:
    """What ranks other than 0 log to: nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class Progress:
    """One epoch's progress bar on stderr (tqdm): batches, the latest loss and items/s; nothing when quiet."""

    def __init__(self, total: int, initial: int, desc: str, enabled: bool):
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="batch", dynamic_ncols=True, leave=False) \
            if enabled else None

    def show(self, values: dict[str, float], rate: float) -> None:
        if self.bar is not None and values:
            self.bar.set_postfix(loss=f"{values.get('loss', next(iter(values.values()))):.4g}", items_s=f"{rate:.0f}")

    def tick(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def new_run_dir(name: str, root: Path = Path("runs")) -> Path:
    """runs/NAME, or runs/NAME-2, -3... if NAME already holds a run (never overwrite a run silently)."""
    path, i = root / name, 1
    while (path / "checkpoints").exists():
        i += 1
        path = root / f"{name}-{i}"
    return path


class RunLog:
    """The run dir's writer. ``history`` (logged training scalars) and ``epochs`` (one row per epoch) are kept
    in memory and in metrics.json; a resumed run reloads them up to its checkpoint.

    Scalar events are handed to TensorBoard's writer thread in bundles, at most every ``HAND_SECONDS``, and at
    every flush (before each checkpoint) and close. Each hand-off wakes that thread, which then competes with
    the training step for the GIL and the cores; one wake-up a second instead of one per logged step is what
    keeps logging every step (``log_every: 1``) cheap. TensorBoard reads the file every 30 s anyway."""

    HAND_SECONDS = 1.0

    def __init__(self, run_dir: Path, cfg: dict, enabled: bool = True):
        self.run_dir, self.cfg, self.enabled = Path(run_dir), cfg, enabled
        self.history: list[dict] = []
        self.epochs: list[dict] = []
        self.writer: Any = _NoWriter()
        self.pending: list[tuple[Any, int, float]] = []  # (summary, step, wall time) not yet handed over
        self.handed = time.monotonic()

    def reload(self, step: int, epoch: int) -> None:
        """Keep what metrics.json recorded up to a resumed checkpoint (step, epoch), drop what came after."""
        path = self.run_dir / "metrics.json"
        if path.exists():
            old = json.loads(path.read_text())
            self.history = [h for h in old.get("history", []) if h["step"] <= step]
            self.epochs = [e for e in old.get("epochs", []) if e["epoch"] < epoch]

    def open(self, step: int, changes: dict[str, tuple] | None = None) -> None:
        """Create the run dir, write the resolved config, and start (or continue after ``step``) the events.

        A resumed run whose ``train`` keys changed keeps the first config as config.original.yaml and appends
        the change to changes.yaml; config.yaml is the config in force. Events after the checkpoint's step,
        written before a crash, are purged, so the curves have neither gaps nor repeats.
        """
        if not self.enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        config = self.run_dir / "config.yaml"
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if step == 0:  # leftovers of a start that died before its first checkpoint belong to no run
                for stale in [*self.run_dir.glob("events.out.tfevents.*"), self.run_dir / "metrics.json"]:
                    stale.unlink(missing_ok=True)
            if changes:
                original = self.run_dir / "config.original.yaml"
                if config.exists() and not original.exists():
                    os.replace(config, original)
                entry = [{"step": step, "changes": {f"train.{k}": list(v) for k, v in changes.items()}}]
                with open(self.run_dir / "changes.yaml", "a", encoding="utf-8") as f:
                    f.write(yaml.safe_dump(entry, sort_keys=False))
            tmp = self.run_dir / ".config.yaml.tmp"
            tmp.write_text(dump(self.cfg))
            os.replace(tmp, config)
        except OSError as e:
            raise ZooError(f"cannot write the run dir '{self.run_dir}' ({e.strerror or e}); pick another "
                           f"--run-dir or free the disk") from None
        self.writer = SummaryWriter(str(self.run_dir), purge_step=step + 1 if step else None, max_queue=100_000)
        if step == 0:
            self.writer.add_text("config", "```\n" + dump(self.cfg) + "\n```", 0)

    def flush(self) -> None:
        """Events on disk up to now: called before every checkpoint, so a crash loses no logged step."""
        self._hand_over()
        self.writer.flush()

    def scalars(self, values: dict[str, float], step: int) -> None:
        """A step's scalars as one TensorBoard event (one protobuf, not one per scalar), handed over in bundles."""
        if not values or isinstance(self.writer, _NoWriter):
            return
        from tensorboard.compat.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=k, simple_value=float(x)) for k, x in values.items()])
        self.pending.append((summary, step, time.time()))
        if time.monotonic() - self.handed >= self.HAND_SECONDS:
            self._hand_over()

    def _hand_over(self) -> None:
        if self.pending:
            writer = self.writer._get_file_writer()
            for summary, step, wall in self.pending:
                writer.add_summary(summary, step, wall)
            self.pending = []
        self.handed = time.monotonic()

    def train_scalars(self, values: dict[str, float], step: int, epoch: int, rate: float) -> None:
        """Averaged training terms every ``log_every`` steps, with the throughput (items/s)."""
        self.history.append({"step": step, "epoch": epoch, **values})
        self.scalars({**{"train/" + k: v for k, v in values.items()}, "train/items_per_s": rate}, step)

    def epoch_row(self, row: dict[str, Any]) -> None:
        self.scalars({k: v for k, v in row.items() if k not in ("epoch", "step")}, row["step"])
        self.epochs.append(row)

    def visuals(self, items: dict[str, Any], epoch: int) -> None:
        """A model's per-epoch visuals: TensorBoard at the epoch, files samples/NAME_epochEEE.png/.txt."""
        if self.enabled:
            vis.write(items, self.writer, epoch, self.run_dir / "samples", f"_epoch{epoch:03d}")

    def artifacts(self, items: dict[str, Any], step: int) -> None:
        """End-of-training outputs: figures and text into the run dir (models write their own image files)."""
        if self.enabled:
            vis.write(items, self.writer, step, self.run_dir, image_files=False)

    def metrics(self, status: str, epoch: int, step: int, best: float, **extra) -> dict:
        """metrics.json (written atomically): status, position, best value, per-epoch rows and history."""
        out = {"name": self.cfg["name"], "model": self.cfg["model"]["name"], "status": status,
               "epoch": epoch, "step": step, "best": best if math.isfinite(best) else None, **extra,
               "epochs": self.epochs, "history": self.history}
        if self.enabled:
            tmp = self.run_dir / "metrics.json.tmp"
            tmp.write_text(json.dumps(out, indent=1))
            os.replace(tmp, self.run_dir / "metrics.json")
        return out

    def hparams(self, step: int) -> None:
        """The config's scalar hyper-parameters beside the last validation metrics (TensorBoard's HPARAMS tab)."""
        if not self.enabled:
            return
        from torch.utils.tensorboard.summary import hparams

        flat = {"model": self.cfg["model"]["name"]}
        for section in ("model", "train"):
            for k, v in self.cfg[section].items():
                if isinstance(v, (int, float, str, bool)) and k != "name":
                    flat[f"{section}.{k}"] = v
            for k, v in (self.cfg[section].get("optimizer") or {}).items():
                if isinstance(v, (int, float, str)):
                    flat[f"{section}.optimizer.{k}"] = v
        last = self.epochs[-1] if self.epochs else {}
        metrics = {f"hparam/{k}": v for k, v in last.items() if k.startswith("val/")}
        for summary in hparams(flat, metrics):
            self.writer.file_writer.add_summary(summary)
        self.scalars(metrics, step)

    def close(self) -> None:
        self._hand_over()  # pending events exist only with a real writer
        self.writer.close()
