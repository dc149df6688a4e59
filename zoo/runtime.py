"""Process-level helpers shared by the trainer and the CLI: device choice, seeding, stop requests."""
from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
from typing import Any

import torch

from .errors import ConfigError, ZooError


def pick_device(name: str, precision: str = "fp32") -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    elif name == "cuda" and not torch.cuda.is_available():
        raise ZooError("train.device is 'cuda' but no CUDA device is available; use train.device=auto or cpu")
    if precision == "fp16" and name != "cuda":
        raise ConfigError("train.precision=fp16 needs CUDA; use bf16 or fp32 on the CPU")
    return torch.device(name)


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


def set_threads(local_world: int) -> None:
    """CPU threads: an explicit OMP_NUM_THREADS or an earlier ``torch.set_num_threads`` is respected; several
    processes on one machine (torchrun) share its cores instead of each taking all of them."""
    if local_world > 1 and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))


def _is_loss(key: str) -> bool:
    return key == "loss" or key.endswith("/loss")


class StepWindow:
    """The detached terms of the steps since the last log, kept on the device: a step adds a reference, not a
    tensor op or a host read. ``means`` and ``first_nonfinite`` read them in one host sync each."""

    def __init__(self):
        self.entries: list[tuple[int, dict[str, torch.Tensor]]] = []
        self.checked = 0  # entries already checked for NaN/inf

    def add(self, step: int, terms: dict[str, torch.Tensor]) -> None:
        self.entries.append((step, terms))

    def clear(self) -> None:
        self.entries, self.checked = [], 0

    def means(self) -> dict[str, float]:
        """Each term's mean over the steps that logged it."""
        keys = list(dict.fromkeys(k for _, terms in self.entries for k in terms))
        if not keys:
            return {}
        means = torch.stack([torch.stack([t[k] for _, t in self.entries if k in t]).float().mean() for k in keys])
        return dict(zip(keys, means.tolist()))

    def first_nonfinite(self, dist, single: str) -> tuple[int, str, str, float] | None:
        """(step, optimizer, term, value) of the first NaN/inf loss not yet checked, or None. A collective."""
        new, self.checked = self.entries[self.checked:], len(self.entries)
        losses = [v for _, terms in new for k, v in terms.items() if _is_loss(k)]
        ok = torch.stack(losses).isfinite().all() if losses else True
        if not dist.any(not bool(ok)):
            return None
        for step, terms in new:
            for k, v in terms.items():
                if _is_loss(k) and not bool(v.isfinite().all()):
                    prefix = k[:-len("loss")]  # "d/" when a model has several optimizers
                    bad = next((j for j, u in terms.items() if j.startswith(prefix) and j != k
                                and not bool(u.isfinite().all())), k)
                    return step, prefix.rstrip("/") or single, bad[len(prefix):], float(terms[bad].float().sum())
        return None
