"""Everything a run writes besides checkpoints: the run dir, config.yaml, TensorBoard events, metrics.json,
sample images and the hyper-parameter summary. Under torchrun only rank 0 writes; other ranks hold a RunLog
that keeps the same bookkeeping and writes nothing.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import shutil
import socket
import struct
import time
from pathlib import Path
from typing import Any

import google_crc32c
import yaml
from tqdm import tqdm

from . import visuals as vis
from .config import dump
from .errors import ZooError


def strict_json(value: Any, **kwargs) -> str:
    """JSON that any parser reads: a NaN or infinite float (a diverged loss, a metric with nothing to average)
    becomes null, where Python's default writes NaN/Infinity, which jq, JavaScript and pandas' strict mode refuse.
    Arrays (``tolist``) become lists, anything else its string."""
    def clean(v):
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if hasattr(v, "tolist"):
            return clean(v.tolist())
        return v if v is None or isinstance(v, (str, int, bool)) else str(v)
    return json.dumps(clean(value), allow_nan=False, **kwargs)


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


def _masked_crc32c(data: bytes) -> int:
    x = google_crc32c.value(data)
    return (((x >> 15) | (x << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _records(path: Path):
    """(record, event bytes) of each whole TFRecord of an event file; a torn last record (a crash) ends it."""
    data = path.read_bytes()
    i = 0
    while i + 12 <= len(data):
        n = struct.unpack_from("<Q", data, i)[0]
        end = i + 12 + n + 4
        if end > len(data):
            break
        yield data[i:end], data[i + 12:i + 12 + n]
        i = end


class EventFile:
    """A TensorBoard event file written in the caller's thread, with the subset of SummaryWriter's methods zoo
    uses. torch's SummaryWriter hands every event to a writer thread through a queue; each hand-off wakes that
    thread, which then competes with the training step for the GIL (about 25 µs an event on a 2-core CPU, a
    sixth of a tiny model's step), and it checksums records in pure Python. Here events are serialised and
    framed as they come (TFRecord: length, its masked CRC-32C, the Event, its masked CRC-32C; C CRCs from
    google-crc32c) and reach the file in one write at each ``flush``."""

    _uid = itertools.count()

    def __init__(self, logdir: Path, purge_step: int | None = None):
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog

        self.Event, self.records, self.scalar_events = Event, [], {}
        # TensorBoard reads a run's files in name order: microseconds and a padded counter keep a resumed run's
        # file after the earlier ones even within one second of one process (seconds and uid 10 sort before 9)
        name = (f"events.out.tfevents.{time.time_ns() // 1000:016d}.{socket.gethostname()}.{os.getpid()}."
                f"{next(self._uid):06d}")
        self.file = open(Path(logdir) / name, "ab")
        self.add_event(Event(wall_time=time.time(), file_version="brain.Event:2"))
        if purge_step is not None:  # TensorBoard hides this file's earlier events from this step on
            self.add_event(Event(step=purge_step, wall_time=time.time(),
                                 session_log=SessionLog(status=SessionLog.START)))
        self.flush()

    def add_event(self, event) -> None:
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        self.records += (header, struct.pack("<I", _masked_crc32c(header)), data,
                         struct.pack("<I", _masked_crc32c(data)))

    def add_summary(self, summary, step: int = 0, wall_time: float | None = None) -> None:
        self.add_event(self.Event(summary=summary, step=step, wall_time=time.time() if wall_time is None
                                  else wall_time))

    def add_scalars(self, values: dict[str, float], step: int) -> None:
        """One event holding a step's scalars. Its message is built once per set of tags and refilled after:
        half the cost of a new one, which counts when every step of a tiny model is logged."""
        if (event := self.scalar_events.get(tags := tuple(values))) is None:
            from tensorboard.compat.proto.summary_pb2 import Summary

            event = self.scalar_events[tags] = self.Event(summary=Summary(value=[Summary.Value(tag=k) for k in tags]))
        event.step, event.wall_time = step, time.time()
        for slot, x in zip(event.summary.value, values.values()):
            slot.simple_value = float(x)
        self.add_event(event)

    def add_text(self, tag: str, text: str, step: int) -> None:
        from torch.utils.tensorboard.summary import text as text_summary

        self.add_summary(text_summary(tag, text), step)

    def add_image(self, tag: str, image, step: int) -> None:
        """``image``: [C, H, W] floats in [0, 1]."""
        from torch.utils.tensorboard.summary import image as image_summary

        self.add_summary(image_summary(tag, image, dataformats="CHW"), step)

    def add_figure(self, tag: str, figure, step: int) -> None:
        """A matplotlib figure as an image (the figure is closed)."""
        from torch.utils.tensorboard._utils import figure_to_image

        self.add_image(tag, figure_to_image(figure, close=True), step)

    def flush(self) -> None:
        if self.records:
            self.file.write(b"".join(self.records))
            self.records = []
        self.file.flush()

    def close(self) -> None:
        if not self.file.closed:
            self.flush()
            self.file.close()


def hparams_summaries(values: dict[str, int | float | str | bool]) -> list:
    """The summaries of one run in TensorBoard's HPARAMS tab: session start (its hyper-parameters) and end.

    No 'experiment' summary: TensorBoard takes the first one it finds in the whole logdir as the tab's columns, so
    with runs of several models under ``runs/`` one model's metrics and hyper-parameters stood for all and the
    others' cells were empty. Without one it gathers every run's hyper-parameters and, as metrics, the last value
    of every scalar (val/... of the last epoch). torch's ``hparams`` writes one, and tests int before bool (it
    showed booleans as 0.0/1.0): zoo builds these itself."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    start = plugin_data_pb2.SessionStartInfo()
    for k, v in values.items():
        field = "bool_value" if isinstance(v, bool) else "string_value" if isinstance(v, str) else "number_value"
        setattr(start.hparams[k], field, v)

    def summary(tag: str, **data) -> Summary:
        content = plugin_data_pb2.HParamsPluginData(version=metadata.PLUGIN_DATA_VERSION, **data).SerializeToString()
        meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME,
                                                                      content=content))
        return Summary(value=[Summary.Value(tag=tag, metadata=meta)])

    return [summary(metadata.SESSION_START_INFO_TAG, session_start_info=start),
            summary(metadata.SESSION_END_INFO_TAG,
                    session_end_info=plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS))]


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

    Events reach the file (``EventFile``) at most every ``WRITE_SECONDS``, and at every flush (before each
    checkpoint) and close: one write a second instead of one per logged step keeps logging every step
    (``log_every: 1``) cheap. TensorBoard reads the file every 30 s anyway."""

    WRITE_SECONDS = 1.0

    def __init__(self, run_dir: Path, cfg: dict, enabled: bool = True):
        self.run_dir, self.cfg, self.enabled = Path(run_dir), cfg, enabled
        self.history: list[dict] = []
        self.epochs: list[dict] = []
        self.writer: Any = _NoWriter()
        self.written = time.monotonic()
        self.shown: tuple[int, set[str]] = (-1, set())  # the step and names of the last visuals logged
        self.found: set[str] | None = None  # what the run dir held before open (None: no dir), for discard
        self.opened = False

    def reload(self, step: int, epoch: int) -> None:
        """Keep what metrics.json recorded up to a resumed checkpoint (step, epoch), drop what came after."""
        path = self.run_dir / "metrics.json"
        if path.exists():
            try:
                old = json.loads(path.read_text())
                self.history = [h for h in old.get("history", []) if h["step"] <= step]
                self.epochs = [e for e in old.get("epochs", []) if e["epoch"] < epoch]
            except (ValueError, AttributeError, TypeError, KeyError):  # not the JSON this class writes
                raise ZooError(f"'{path}' is not a metrics file zoo wrote (edited or damaged?); restore it, or "
                               "move it away to resume with the curves starting afresh") from None
        if self.epochs and self.epochs[-1]["step"] == step:  # resumed at an epoch's end: its visuals are logged
            suffix = f"_epoch{epoch - 1:03d}"
            self.shown = (step, {p.stem[:-len(suffix)] for p in (self.run_dir / "samples").glob(f"*{suffix}.*")})

    def open(self, step: int, changes: dict[str, tuple] | None = None) -> None:
        """Create the run dir, write the resolved config, and start (or continue after ``step``) the events.

        A resumed run whose ``train`` keys changed keeps the first config as config.original.yaml and appends
        the change to changes.yaml; config.yaml is the config in force. Events after the checkpoint's step,
        written before a crash, are purged, so the curves have neither gaps nor repeats.
        """
        if not self.enabled:
            return
        config = self.run_dir / "config.yaml"
        self.found = {p.name for p in self.run_dir.iterdir()} if self.run_dir.is_dir() else None
        self.opened = True
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
            self.writer = EventFile(self.run_dir, purge_step=step + 1 if step else None)
        except OSError as e:
            if self.found is None:  # made here, holding nothing of use
                shutil.rmtree(self.run_dir, ignore_errors=True)
            with contextlib.suppress(OSError):  # a dir that was there keeps what it held, not our half-write
                (self.run_dir / ".config.yaml.tmp").unlink(missing_ok=True)
            raise ZooError(f"cannot write the run dir '{self.run_dir}' ({e.strerror or e}); pick another "
                           f"--run-dir or free the disk") from None
        if step == 0 or changes:  # a resume that changed train keys: the config in force from the next step on
            self.writer.add_text("config", "```\n" + dump(self.cfg) + "\n```", step + 1 if step else 0)

    def flush(self) -> None:
        """Events in the file up to now: called before every checkpoint, so a crash loses no logged step."""
        self.writer.flush()
        self.written = time.monotonic()

    def scalars(self, values: dict[str, float], step: int) -> None:
        """A step's scalars as one TensorBoard event (one protobuf, not one per scalar)."""
        if not values or isinstance(self.writer, _NoWriter):
            return
        self.writer.add_scalars(values, step)
        if time.monotonic() - self.written >= self.WRITE_SECONDS:
            self.flush()

    def train_scalars(self, values: dict[str, float], step: int, epoch: int, rate: float) -> None:
        """Averaged training terms every ``log_every`` steps, with the throughput (items/s)."""
        self.history.append({"step": step, "epoch": epoch, **values})
        self.scalars({**{"train/" + k: v for k, v in values.items()}, "train/items_per_s": rate}, step)

    def epoch_row(self, row: dict[str, Any]) -> None:
        self.scalars({k: v for k, v in row.items() if k not in ("epoch", "step")}, row["step"])
        self.epochs.append(row)

    def visuals(self, items: dict[str, Any], epoch: int, step: int) -> None:
        """A model's per-epoch visuals: TensorBoard at the epoch's last step, the x of its validation point (and
        a step a resume purges, unlike an epoch index), files samples/NAME_epochEEE.png/.txt."""
        if self.enabled:
            vis.write(items, self.writer, step, self.run_dir / "samples", f"_epoch{epoch:03d}")
            self.shown = (step, set(items))

    def artifacts(self, items: dict[str, Any], step: int) -> None:
        """End-of-training outputs: images, figures and text into the run dir as NAME.png/.txt. One named like a
        visual of the last epoch (a model's final curves or centres) is that picture again, at that same step:
        TensorBoard keeps the epoch's alone."""
        if self.enabled:
            again = self.shown[1] if self.shown[0] == step else set()
            vis.write(items, self.writer, step, self.run_dir, skip_tensorboard=again)

    def metrics(self, status: str, epoch: int, step: int, best: float, **extra) -> dict:
        """metrics.json (written atomically): status, position, best value, per-epoch rows and history."""
        out = {"name": self.cfg["name"], "model": self.cfg["model"]["name"], "status": status,
               "epoch": epoch, "step": step, "best": best if math.isfinite(best) else None, **extra,
               "epochs": self.epochs, "history": self.history}
        if self.enabled:
            tmp = self.run_dir / "metrics.json.tmp"
            tmp.write_text(strict_json(out, indent=1))
            os.replace(tmp, self.run_dir / "metrics.json")
        return out

    def hparams(self, step: int) -> None:
        """The config's hyper-parameters (model, data, train) for TensorBoard's HPARAMS tab, which shows them
        beside the last value of each scalar (the last epoch's val/...): nested sections flattened, lists as the
        config writes them."""
        if not self.enabled:
            return
        flat = {}

        def add(prefix: str, node: dict) -> None:  # nested sections too: optimizer, scheduler, optimizers.GROUP
            for k, v in node.items():
                if isinstance(v, dict):
                    add(f"{prefix}.{k}", v)
                elif f"{prefix}.{k}" in ("model.name", "data.name"):
                    flat[prefix] = v  # the column "model" names the model
                elif isinstance(v, (int, float, str, bool)):
                    flat[f"{prefix}.{k}"] = v
                elif isinstance(v, (list, tuple)):  # widths [64, 128, 512]: what tells two architectures apart
                    flat[f"{prefix}.{k}"] = json.dumps(v, default=str)

        for section in ("model", "data", "train"):
            add(section, self.cfg[section])
        self.forget_hparams()
        for summary in hparams_summaries(flat):
            self.writer.add_summary(summary, step)

    def forget_hparams(self) -> None:
        """Take the hyper-parameter summary of an earlier finish out of the run's older event files. TensorBoard
        keeps a run's first one and ignores the rest, so a run resumed and finished again (more epochs) would show
        the config of its first finish. Files without one are left as they are; the others are rewritten whole."""
        from google.protobuf.message import DecodeError
        from tensorboard.compat.proto.event_pb2 import Event

        for path in sorted(self.run_dir.glob("events.out.tfevents.*")):
            if path.name == Path(self.writer.file.name).name:
                continue
            kept, dropped = [], False
            try:
                for record, data in _records(path):
                    if any(v.tag.startswith("_hparams_/") for v in Event.FromString(data).summary.value):
                        dropped = True
                    else:
                        kept.append(record)
                if dropped:
                    tmp = path.with_name(".events.tmp")  # TensorBoard reads any file whose name holds "tfevents"
                    tmp.write_bytes(b"".join(kept))
                    os.replace(tmp, path)
            except (OSError, DecodeError):  # a damaged or unwritable old file: it keeps its summary, the run ends
                continue

    def discard(self) -> None:
        """Remove what this run wrote (a start refused in its first epoch): the whole dir if it made it, else
        only the entries it added (a dir named with --run-dir may have been there, empty or a dead start's)."""
        self.close()
        if not (self.enabled and self.opened):
            return
        if self.found is None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            return
        for path in self.run_dir.iterdir():
            if path.name not in self.found:
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)

    def close(self) -> None:
        self.writer.close()
