"""Process-level helpers shared by the trainer and the CLI: device choice, seeding, stop requests."""
from __future__ import annotations

import contextlib
import math
import os
import random
import re
import signal
import threading
import time
from typing import Any

import torch

from .errors import ConfigError, ZooError


def pick_device(name: str, precision: str = "fp32", what: str = "train.device") -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` -> a device this machine has; else a one-line error naming
    ``what`` (the config key, or the CLI's ``--device``)."""
    fix = f"{what}=auto or cpu" if what.startswith("train.") else f"{what} auto or cpu"
    index = re.fullmatch(r"cuda(?::(\d+))?", name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    elif name != "cpu" and index is None:
        raise ZooError(f"{what} '{name}' is not a device this tool runs on: use auto, cpu, cuda or cuda:N")
    elif index is not None and not torch.cuda.is_available():
        raise ZooError(f"{what} is '{name}' but no CUDA device is available; use {fix}")
    elif index is not None and index.group(1) and int(index.group(1)) >= torch.cuda.device_count():
        raise ZooError(f"{what} '{name}': this machine has {torch.cuda.device_count()} CUDA device(s), "
                       "numbered from 0")
    if precision == "fp16" and not name.startswith("cuda"):
        raise ConfigError("train.precision=fp16 needs CUDA; use bf16 or fp32 on the CPU")
    return torch.device(name)


SEED_MAX = 2**32 - 1  # numpy's and Lightning's range; seeds derived from it (seed × 1,000,003 + epoch) fit in 64 bits


def check_seed(key: str, value) -> None:
    """A seed is an integer in [0, SEED_MAX]: larger ones overflow the 64-bit seeds derived from them."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise ConfigError(f"'{key}' must be an integer in [0, {SEED_MAX}], got {value!r}")


def seed_everything(seed: int) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class StopRequests:
    """While training, SIGINT (Ctrl-C) and SIGTERM (kill, schedulers, torchrun) ask for a stop instead of raising
    mid-step: the loop finishes its batch, so every optimizer of the schedule has stepped, then saves a resumable
    last.pt. A second Ctrl-C stops at once, saving nothing."""

    def __init__(self):
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


# ---- speed options (train.precision, channels_last, cudnn_benchmark, compile) ----------------------------------
def autocast(device: torch.device, precision: str):
    """The step's autocast context. Models keep fragile terms (log-determinants, log-softmax, FPS/kNN
    distances) in fp32 by computing them outside autocast or in float64 themselves."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def prepare_model(model: torch.nn.Module, t: dict, device: torch.device) -> torch.nn.Module:
    """Apply the config's speed options in place. ``compile`` wraps the model's step *methods* with
    ``torch.compile`` rather than the module, so ``state_dict`` keys stay plain and a checkpoint of a compiled
    run loads into a plain model (``reduce-overhead`` is the CUDA-graph mode for static-shape steps)."""
    if t["channels_last"]:
        model.to(memory_format=torch.channels_last)  # 4-D weights only; conv outputs follow the weights' layout
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(t["cudnn_benchmark"])
    if t["compile"] != "none":
        mode = None if t["compile"] == "default" else t["compile"]
        for name in ("training_step", "validation_step"):
            setattr(model, name, torch.compile(getattr(model, name), mode=mode, dynamic=None))
    return model


def compile_refusal(error: RuntimeError, mode: str) -> ConfigError | None:
    """The one-line error for a step ``torch.compile`` cannot run, or None for any other failure. A step that
    differentiates a gradient (a gradient penalty such as R1) needs double backward, which compiled steps lack."""
    if mode != "none" and "double backward" in str(error):
        return ConfigError(f"train.compile={mode} cannot run this model's training step: it differentiates a "
                           f"gradient (a gradient penalty), which torch.compile does not support; use "
                           f"train.compile=none, or switch the penalty off")
    return None


def set_threads(local_world: int) -> None:
    """CPU threads: an explicit OMP_NUM_THREADS or an earlier ``torch.set_num_threads`` is respected; several
    processes on one machine (torchrun) share its cores instead of each taking all of them."""
    if local_world > 1 and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))


def _means(rows: list[dict[str, float]]) -> dict[str, float]:
    """Each term's mean over the rows that have it."""
    if len(rows) == 1:  # log_every: 1
        return dict(rows[0])
    sums: dict[str, list[float]] = {}
    for terms in rows:
        for k, v in terms.items():
            sums.setdefault(k, []).append(v)
    return {k: math.fsum(v) / len(v) for k, v in sums.items()}


def _stack_scalars(values: list[torch.Tensor]) -> torch.Tensor | None:
    """The 0-d ``values`` as one fp32 vector (empty when there are none: skipped steps log nothing); None when
    some value is not a scalar. One stack, no Python test per value."""
    if not values:
        return torch.zeros(0)
    try:
        stacked = torch.stack(values)
    except RuntimeError:  # shapes differ
        return None
    return stacked.float() if stacked.dim() == 1 else None


def _is_loss(key: str) -> bool:
    return key == "loss" or key.endswith("/loss")


class StepWindow:
    """The detached terms of the steps since the last read, kept on the device: a step adds a reference, not a
    tensor op or a host read. Log points are marked as they pass; a read brings the terms to the host together
    (one stack, one host sync), notes the first NaN/inf loss and keeps each log point's means (over its steps
    since the previous log point of its epoch). Reads wait for ``publish``, which the trainer calls when ``due``
    (``READ_SECONDS`` since the last, or ``MAX_HELD`` steps held) and before each checkpoint: on the CPU too,
    where a read costs no sync, one read per second is cheaper than one per log point."""

    READ_SECONDS = 1.0
    MAX_HELD = 256

    def __init__(self):
        self.entries: list[tuple[int, dict[str, torch.Tensor]]] = []  # not yet read
        self.open: list[tuple[int, dict[str, float]]] = []  # read, after the last log point
        self.marks: list[tuple] = []  # (last step, log step, epoch, seen, seconds); log step None: not logged
        self.logs: list[tuple] = []  # read log points: (step, epoch, seen, seconds, means)
        self.bad: tuple[int, str, dict[str, float]] | None = None  # the first NaN/inf loss read
        self.published_at = time.monotonic()

    def add(self, step: int, terms: dict[str, torch.Tensor]) -> None:
        self.entries.append((step, terms))

    def mark(self, step: int, epoch: int, seen, seconds: float) -> None:
        """A log point after ``step``: ``seen`` items (an int or a 0-d tensor) in ``seconds`` of its epoch."""
        self.marks.append((step, step, epoch, seen, seconds))

    def cut(self) -> None:
        """An epoch ends: its steps after its last log point are checked but not logged."""
        last = self.entries[-1][0] if self.entries else (self.open[-1][0] if self.open else None)
        if last is not None:
            self.marks.append((last, None, None, None, None))

    def due(self) -> bool:
        """A second since the last read, or many steps held: thousands of live tensors slow Python's collector."""
        return len(self.entries) >= self.MAX_HELD or time.monotonic() - self.published_at >= self.READ_SECONDS

    def read(self) -> None:
        if self.entries:
            values = [v for _, terms in self.entries for v in terms.values()]
            stacked = _stack_scalars(values)
            if stacked is None:  # a non-scalar term: its mean, or its sum if an element is not finite (NaN/inf shows)
                stacked = torch.stack([v.float().mean() if bool(v.isfinite().all()) else v.float().sum()
                                       for v in values])
            numbers = stacked.tolist()
            flat = iter(numbers)
            rows = [(step, {k: next(flat) for k in terms}) for step, terms in self.entries]
            self.entries = []
            if self.bad is None and not math.isfinite(sum(numbers)):  # scanned only when some number is not
                self.bad = next(((step, k, terms) for step, terms in rows for k, v in terms.items()
                                 if _is_loss(k) and not math.isfinite(v)), None)
            self.open.extend(rows)
        i = 0
        for last, step, epoch, seen, seconds in self.marks:
            j = i
            while j < len(self.open) and self.open[j][0] <= last:
                j += 1
            # a log point whose steps were all skipped (train.on_nonfinite: skip) has nothing to show
            if step is not None and j > i and (means := _means([t for _, t in self.open[i:j]])):
                self.logs.append((step, epoch, seen, seconds, means))
            i = j
        del self.open[:i]
        self.marks = []

    def held(self) -> list[tuple[int, dict[str, float]]]:
        """The terms read since the last log point (a checkpoint carries them: the next log point's mean after a
        resume covers the steps before the stop too). Call after ``take_logs``, which reads every step."""
        self.read()
        return [(step, dict(terms)) for step, terms in self.open]

    def restore(self, held) -> None:
        """Put back what ``held`` returned when the checkpoint was written."""
        self.open = [(int(step), dict(terms)) for step, terms in held]

    def take_logs(self) -> list[tuple[int, int, Any, float, dict[str, float]]]:
        """(step, epoch, seen, seconds, means) of each log point since the last call."""
        self.read()
        out, self.logs, self.published_at = self.logs, [], time.monotonic()
        return out

    def first_nonfinite(self, dist, single: str) -> tuple[int, str, str, float] | None:
        """(step, optimizer, term, value) of the first NaN/inf loss read, or None. A collective."""
        self.read()
        if not dist.any(self.bad is not None) or self.bad is None:
            return None
        step, k, terms = self.bad
        prefix = k[:-len("loss")]  # "d/" when a model has several optimizers
        bad = next((j for j, u in terms.items() if j.startswith(prefix) and j != k and not math.isfinite(u)), k)
        return step, prefix.rstrip("/") or single, bad[len(prefix):], terms[bad]
