"""Self-describing checkpoints: written atomically, loaded with ``weights_only=True``.

A checkpoint holds everything needed to sample or resume without the training YAML: the registry name and
resolved config, model/optimizer/scheduler/scaler states, epoch and step, every RNG state, versions.
"""
from __future__ import annotations

import json
import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .errors import ZooError

FORMAT = 1


def rng_state() -> dict[str, Any]:
    import numpy as np

    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state["numpy"] = {"keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP / torch.compile wrappers, so saved keys never carry their prefixes."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def save(path: Path, payload: dict[str, Any]) -> None:
    """Write a checkpoint atomically, stamped with the format and the zoo and torch versions."""
    atomic_save(path, {"format": FORMAT, "zoo_version": __version__, "torch_version": str(torch.__version__),
                       **payload})


def atomic_save(path: Path, payload: Any) -> None:
    """torch.save to a temp file in the same directory, fsync, then rename: a crash never leaves a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: Path) -> dict[str, Any]:
    """Load a checkpoint onto the CPU without running pickled code."""
    path = Path(path)
    if not path.is_file():
        raise ZooError(f"checkpoint '{path}' does not exist; pass a run dir (runs/NAME) or a .pt file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        why = next((ln for ln in lines if "error:" in ln), lines[0] if lines else type(e).__name__)
        raise ZooError(f"'{path}' is not a readable zoo checkpoint ({why[:160]}); re-train or pick another file")
    if not isinstance(ckpt, dict) or "model_name" not in ckpt or "config" not in ckpt:
        raise ZooError(f"'{path}' is a torch file but not a zoo checkpoint (no model_name/config)")
    return ckpt


def check_resumable(ck: dict[str, Any], cfg: dict, run_dir: Path) -> None:
    """A run resumes only under the model and data sections it was trained with."""
    from .data.base import COMMON_OPTIONS

    old = {**ck["config"], "data": {**COMMON_OPTIONS, **ck["config"]["data"]}}  # runs from before those options
    for section in ("model", "data"):
        if old[section] != cfg[section]:
            diff = sorted(k for k in set(old[section]) | set(cfg[section])
                          if old[section].get(k) != cfg[section].get(k))[0]
            raise ZooError(f"cannot resume '{run_dir}': its {section}.{diff} differs from this config "
                           f"({old[section].get(diff)!r} vs {cfg[section].get(diff)!r}); use the run's config.yaml")


def check_data_info(ck: dict[str, Any], info: dict[str, Any], run_dir: Path) -> None:
    """The data must declare what it declared when the run started (vocabularies, shapes): else the saved
    weights would meet other inputs."""
    plain = lambda v: json.loads(json.dumps(v))  # noqa: E731  (tuples read back from a checkpoint as lists)
    old = ck.get("data_info") or {}
    changed = sorted(k for k in set(old) | set(info) if plain(old.get(k)) != plain(info.get(k)))
    if changed:
        raise ZooError(f"cannot resume '{run_dir}': the data now declares a different {changed[0]} than when the "
                       f"run started (did its files change?); restore them or start a new run")


def find_checkpoint(run: str | Path, which: str = "last") -> Path:
    """A run dir, a run name under runs/, or a .pt file -> the checkpoint path."""
    p = Path(run)
    if p.suffix == ".pt" or p.is_file():
        return p
    for d in (p, Path("runs") / p):
        if (d / "checkpoints").is_dir():
            ck = d / "checkpoints" / f"{which}.pt"
            if ck.is_file():
                return ck
            raise ZooError(f"run '{d}' has no checkpoints/{which}.pt yet; train it first (zoo train ... )")
    raise ZooError(f"run '{run}' not found: pass a run dir (e.g. runs/vae) or a checkpoint .pt file")


def load_run(run: str | Path, device: str | torch.device | None = None, which: str = "last"):
    """Rebuild a trained model from its checkpoint alone: returns (model, config, checkpoint dict)."""
    from .registry import create_model

    path = find_checkpoint(run, which)
    ckpt = load(path)
    cfg = ckpt["config"]
    margs = {k: v for k, v in cfg["model"].items() if k != "name"}
    model = create_model(ckpt["model_name"], ckpt.get("data_info"), **margs)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise ZooError(f"'{path}' does not match model '{ckpt['model_name']}' of this zoo version "
                       f"({str(e).splitlines()[0][:120]})") from None
    model.to(device or "cpu").eval()
    return model, cfg, ckpt
