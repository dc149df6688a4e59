"""Process-level helpers shared by the trainer and the CLI: device choice, seeding, stop requests."""
from __future__ import annotations

import random
import signal
import threading
from typing import Any

import torch

from .errors import ZooError


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ZooError("train.device is 'cuda' but no CUDA device is available; use train.device=auto or cpu")
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
