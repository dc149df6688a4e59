"""Self-describing checkpoints: written atomically, verified on load, loaded with ``weights_only=True``.

A checkpoint holds everything needed to sample or resume without the training YAML: the registry name and
resolved config, model/optimizer/scheduler/scaler states, epoch and step, every RNG state, versions, and a
digest of its contents. A run keeps its last ``train.keep_last`` checkpoints as ``checkpoints/step-N.pt``;
``last.pt`` is the newest (a hard link), and ``--resume`` falls back to an older one if ``last.pt`` is bad.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import pickle
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .errors import ConfigError, ZooError, suggest

FORMAT = 1
TORCH_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation")


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


def digest(payload: Any) -> str:
    """sha256 over every tensor's bytes and every other leaf's repr, in the payload's own order."""
    h = hashlib.sha256()

    def walk(node):
        if isinstance(node, torch.Tensor):
            t = node.detach().contiguous().cpu()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(node, dict):
            for k, v in node.items():
                h.update(repr(k).encode())
                walk(v)
        elif isinstance(node, (list, tuple)):
            h.update(b"[")
            for v in node:
                walk(v)
            h.update(b"]")
        else:
            h.update(repr(node).encode())

    walk(payload)
    return h.hexdigest()


def save(path: Path, payload: dict[str, Any]) -> None:
    """Write a checkpoint atomically, stamped with the format, the zoo and torch versions and a digest."""
    payload = {"format": FORMAT, "zoo_version": __version__, "torch_version": str(torch.__version__), **payload}
    atomic_save(path, {**payload, "digest": digest(payload)})


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems cannot open directories: the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(path: Path, payload: Any) -> None:
    """torch.save to a temp file in the same directory, fsync it, rename it over ``path``, fsync the directory:
    a crash at any moment leaves either the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_rotating(directory: Path, payload: dict[str, Any], keep: int) -> Path:
    """``directory/step-N.pt`` written atomically, ``last.pt`` pointed at it (hard link, else a copy), and all
    but the newest ``keep`` step files removed. Returns the step file."""
    directory = Path(directory)
    step_file = directory / f"step-{payload['step']:08d}.pt"
    save(step_file, payload)
    tmp = directory / ".last.pt.link"
    tmp.unlink(missing_ok=True)
    try:
        os.link(step_file, tmp)
    except OSError:  # no hard links here (some network or FAT filesystems): copy instead
        shutil.copyfile(step_file, tmp)
    os.replace(tmp, directory / "last.pt")
    _fsync_dir(directory)
    for old in sorted(directory.glob("step-*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
    return step_file


def load(path: Path) -> dict[str, Any]:
    """Load a checkpoint onto the CPU without running pickled code, and check it is whole."""
    path = Path(path)
    if path.is_dir():
        raise ZooError(f"'{path}' is a directory, not a checkpoint; pass a run dir (runs/NAME) or a .pt file")
    if not path.is_file():
        raise ZooError(f"checkpoint '{path}' does not exist; pass a run dir (runs/NAME) or a .pt file")
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, AttributeError, TypeError,
            KeyError, IndexError, UnicodeDecodeError) as e:  # weights_only refuses code; other errors: not ours
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        # torch wraps the reason in advice: what follows "error:" (maybe on the next line), else the first other line
        said = re.search(r"error:\s*(.+?)(?: Check the documentation|$)", " ".join(lines), re.IGNORECASE)
        plain = [ln for ln in lines if not ln.startswith(TORCH_ADVICE)]
        why = said.group(1) if said else (plain or lines or [type(e).__name__])[0]
        raise ZooError(f"'{path}' is not a readable zoo checkpoint ({why[:160]}); "
                       "re-train or pick another file") from None
    if not isinstance(ckpt, dict) or "model_name" not in ckpt or "config" not in ckpt:
        raise ZooError(f"'{path}' is a torch file but not a zoo checkpoint (no model_name/config)")
    _check_parts(ckpt, path)
    if ckpt.get("format", FORMAT) > FORMAT:
        raise ZooError(f"'{path}' was written by zoo {ckpt.get('zoo_version')} in checkpoint format "
                       f"{ckpt['format']}; this zoo {__version__} reads format {FORMAT}: upgrade zoo")
    if "digest" in ckpt:
        stored = ckpt.pop("digest")
        if digest(ckpt) != stored:
            raise ZooError(f"'{path}' is corrupt: its contents do not match the digest written with it")
    return ckpt


def _check_parts(ckpt: dict[str, Any], path: Path) -> None:
    """The parts every reader of a checkpoint relies on have their types: a tampered file is one line."""
    problems = [what for what, ok in (
        ("format", isinstance(ckpt.get("format", FORMAT), int)),
        ("model_name", isinstance(ckpt["model_name"], str)),
        ("config", isinstance(ckpt["config"], dict) and isinstance(ckpt["config"].get("model"), dict)),
        ("model", isinstance(ckpt.get("model"), dict)),
        ("data_info", isinstance(ckpt.get("data_info") or {}, dict)),
        ("epoch/step", all(isinstance(ckpt.get(k, 0), int) for k in ("epoch", "step"))),
    ) if not ok]
    if problems:
        raise ZooError(f"'{path}' is not a valid zoo checkpoint: its {problems[0]} is missing or malformed; "
                       "re-train or pick another file")


def load_for_resume(run_dir: Path, log=print) -> tuple[dict[str, Any], Path]:
    """last.pt of a run, or, if it is missing or bad, the newest good ``step-N.pt``, saying so."""
    directory = Path(run_dir) / "checkpoints"
    last = directory / "last.pt"
    if not last.exists() and not any(directory.glob("step-*.pt")):  # load()'s "pass a run dir" would confuse
        raise ZooError(f"'{run_dir}' holds no checkpoint yet (it stopped before saving one); start it anew with "
                       f"zoo train CONFIG --run-dir {run_dir}")
    try:
        return load(last), last
    except ZooError as e:
        problem = str(e)
    for candidate in sorted(directory.glob("step-*.pt"), reverse=True):
        try:
            ck = load(candidate)
        except ZooError:
            continue
        log(f"warning: {problem}; resuming from {candidate.name} (step {ck['step']}) instead")
        return ck, candidate
    raise ZooError(f"{problem}, and no older good checkpoint is in {directory}; start a new run")


class Best:
    """What best.pt keeps: the best value so far of ``train.best_metric`` under ``train.best_mode`` (Lightning's
    ModelCheckpoint monitor and mode); ``none`` keeps no best.pt."""

    def __init__(self, train: dict):
        self.metric, self.mode = train["best_metric"], train.get("best_mode", "min")  # runs before modes: min
        self.value = math.inf if self.mode == "min" else -math.inf  # no epoch yet: the first one improves

    def check(self, names: list[str]) -> None:
        if self.metric != "none" and self.metric not in names:
            raise ConfigError(f"train.best_metric '{self.metric}' is not a metric this model logs"
                              f"{suggest(self.metric, names)}; choose one of: {', '.join(names)}, or none")

    def improved(self, row: dict) -> bool:
        """Whether this epoch's row beats the best so far (then it is the new best)."""
        value = row.get(self.metric)
        if value is None or not (value < self.value if self.mode == "min" else value > self.value):
            return False
        self.value = value
        return True

    def restore(self, value: float, saved: dict, log) -> None:
        """The saved best, unless the resumed run tracks another metric or mode: then best.pt starts again."""
        was = Best(saved["train"])
        if (was.metric, was.mode) == (self.metric, self.mode):
            self.value = value
        else:
            log(f"train.best_metric is now {self.metric} ({self.mode}), was {was.metric} ({was.mode}): best.pt "
                "tracks the new one from the next epoch")


#: ``train`` keys that only change how long or how often (or where) a run goes: a resume may change them.
#: Any other ``train`` key changes the numbers (seed, batch size, optimizer, schedule, precision...).
RESUMABLE_TRAIN_KEYS = ("epochs", "max_steps", "log_every", "ckpt_every", "keep_last", "eval_batch_size",
                        "best_metric", "best_mode", "device", "on_nonfinite", "compile", "channels_last",
                        "cudnn_benchmark")


def start_or_resume(run_dir: Path, cfg: dict, resume: bool, allow_changes: bool, log=print):
    """(checkpoint to resume or None, changed train keys as {key: (old, new)}). A fresh run refuses a dir that
    already holds one; a resume loads the newest good checkpoint and checks the config against it."""
    if not resume:
        here = Path(run_dir)
        if any((here / "checkpoints").glob("*.pt")):  # last.pt, or only step-N.pt/best.pt, which resume finds
            raise ZooError(f"'{run_dir}' already holds a run; use --resume {run_dir} to continue it or pick "
                           f"another --run-dir")
        if here.is_dir() and not all(_start_leftover(p) for p in here.iterdir()):
            # '--run-dir .' is the working dir: a run's files must not land among a project's, nor be cleared
            raise ZooError(f"'{run_dir}' is a folder with other files in it, not a run dir; pick a new or empty "
                           "--run-dir")
        return None, {}
    ck, _ = load_for_resume(run_dir, log)
    changed = check_resumable(ck, cfg, run_dir, allow_changes)
    t = cfg["train"]
    if ck["epoch"] >= t["epochs"] and not ck["batch_in_epoch"] and _finished(run_dir):
        # nothing left to train; going on would only redo the end-of-run artifacts and add an empty events file
        raise ZooError(f"'{run_dir}' has finished its {ck['epoch']} epochs; to train on, resume it with more, "
                       f"e.g. train.epochs={ck['epoch'] + 10}")
    was = ck["config"]["data"].get("root")
    if was != cfg["data"].get("root"):
        log(f"data.root is now {cfg['data'].get('root')!r} (was {was!r}): resuming on the data found there")
    return ck, {k: (ck["config"]["train"][k], cfg["train"][k]) for k in changed}


START_FILES = {"config.yaml", "config.original.yaml", "changes.yaml", "metrics.json", ".config.yaml.tmp",
               "checkpoints", "samples"}


def _start_leftover(path: Path) -> bool:
    """What a start that died before its first checkpoint leaves: a fresh start may reuse a dir of these."""
    return path.name in START_FILES or path.name.startswith("events.out.tfevents.")


def _finished(run_dir: Path) -> bool:
    """metrics.json says the run ended normally (a run stopped before its end-of-run work says otherwise)."""
    try:
        return json.loads((Path(run_dir) / "metrics.json").read_text()).get("status") == "finished"
    except (OSError, ValueError, AttributeError):
        return False


def check_resumable(ck: dict[str, Any], cfg: dict, run_dir: Path, allow_changes: bool = False) -> list[str]:
    """A run resumes only under the model and data it was trained with (``data.root`` may move: the data must
    then declare what it declared, check_data_info), and under the same ``train`` keys that decide its numbers
    unless ``allow_changes``. Returns the changed ``train`` keys (to be recorded)."""
    from .config import OPTIMIZER
    from .data.base import COMMON_OPTIONS

    # runs from before an option was added read as if they had its default
    train = dict(ck["config"]["train"])
    train["optimizer"] = {**OPTIMIZER, **train["optimizer"]}
    train["optimizers"] = {g: {**OPTIMIZER, **o} for g, o in (train.get("optimizers") or {}).items()}
    old = {**ck["config"], "data": {**COMMON_OPTIONS, **ck["config"]["data"]}, "train": train}
    old["data"].pop("root", None)  # where the files are, not what they hold: data moves
    if "root" in cfg["data"]:
        old["data"]["root"] = cfg["data"]["root"]
    for section in ("model", "data"):
        if old[section] != cfg[section]:
            diffs = sorted(k for k in set(old[section]) | set(cfg[section])
                           if old[section].get(k) != cfg[section].get(k))
            diff = "name" if "name" in diffs else diffs[0]  # another model or dataset: say that first
            raise ZooError(f"cannot resume '{run_dir}': its {section}.{diff} differs from this config "
                           f"({old[section].get(diff)!r} vs {cfg[section].get(diff)!r}); use the run's config.yaml")
    changed = sorted(k for k in set(old["train"]) | set(cfg["train"])
                     if k in old["train"] and old["train"].get(k) != cfg["train"].get(k))
    numeric = [k for k in changed if k not in RESUMABLE_TRAIN_KEYS]
    if numeric and not allow_changes:
        was, now = _flat(old["train"][numeric[0]], numeric[0]), _flat(cfg["train"][numeric[0]], numeric[0])
        key = next(k for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k))
        raise ZooError(f"cannot resume '{run_dir}': train.{key} differs from the run's ({was.get(key)!r} vs "
                       f"{now.get(key)!r}) and would change its numbers; use the run's config.yaml, or pass "
                       f"--allow-changes to continue anyway (the change is recorded in the run dir)")
    return changed


def _flat(value: Any, prefix: str) -> dict[str, Any]:
    """{"optimizer.lr": 0.1, ...} for nested config sections, {prefix: value} for a plain value."""
    if not isinstance(value, dict):
        return {prefix: value}
    out: dict[str, Any] = {}
    for k, v in value.items():
        out.update(_flat(v, f"{prefix}.{k}"))
    return out


def check_data_info(ck: dict[str, Any], info: dict[str, Any], run_dir: Path) -> None:
    """The data must declare what it declared when the run started (vocabularies, shapes): else the saved
    weights would meet other inputs."""
    plain = lambda v: json.loads(json.dumps(v))  # noqa: E731  (tuples read back from a checkpoint as lists)
    old = ck.get("data_info") or {}
    changed = sorted(k for k in set(old) | set(info)  # json only where == differs: the word list is 8 MB
                     if old.get(k) != info.get(k) and plain(old.get(k)) != plain(info.get(k)))
    if changed:
        raise ZooError(f"cannot resume '{run_dir}': the data now declares a different {changed[0]} than when the "
                       f"run started (did its files change?); restore them or start a new run")


def find_checkpoint(run: str | Path, which: str = "last") -> Path:
    """A run dir, a run name under runs/, or a .pt file -> the checkpoint path."""
    p = Path(run)
    if p.suffix in (".pt", ".safetensors") or p.is_file():
        if which != "last":  # a file is one checkpoint: asking for another must not pass unnoticed
            raise ZooError(f"--checkpoint {which} picks a checkpoint of a run dir, but '{run}' is a file; "
                           "pass the run dir, or the file you want without --checkpoint")
        return p
    for d in (p, Path("runs") / p):
        if (d / "checkpoints").is_dir():
            ck = d / "checkpoints" / f"{which}.pt"
            if ck.is_file():
                return ck
            if which == "best" and (d / "checkpoints" / "last.pt").is_file():  # trained: "train it first" is wrong
                why = ("its train.best_metric is none" if _best_metric(d) == "none"
                       else "none is saved before a validation improves train.best_metric")
                raise ZooError(f"run '{d}' has no checkpoints/best.pt ({why}); use --checkpoint last")
            raise ZooError(f"run '{d}' has no checkpoints/{which}.pt yet; train it first (zoo train ... )")
    raise ZooError(f"run '{run}' not found: pass a run dir (e.g. runs/vae) or a checkpoint .pt file")


def _best_metric(run_dir: Path):
    """The run's train.best_metric from its config.yaml, or None when that cannot be read."""
    import yaml

    try:
        return yaml.safe_load((run_dir / "config.yaml").read_text())["train"].get("best_metric")
    except Exception:  # a hand-edited or missing config.yaml: the message then gives the general reason
        return None


def load_run(run: str | Path, device: str | torch.device | None = None, which: str = "last"):
    """Rebuild a trained model from its checkpoint alone: returns (model, config, checkpoint dict)."""
    from .registry import build_model, model_info

    path = find_checkpoint(run, which)
    ckpt = load(path)
    cfg = ckpt["config"]
    model_info(ckpt["model_name"])  # a model this zoo does not have: one line, before anything is built
    model = build_model({**cfg["model"], "name": ckpt["model_name"]}, ckpt.get("data_info"))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise ZooError(f"'{path}' does not match model '{ckpt['model_name']}' of this zoo version "
                       f"({str(e).splitlines()[0][:120]})") from None
    model.to(device or "cpu").eval()
    return model, cfg, ckpt


# ---- sharing: safetensors ------------------------------------------------------------------------------------
def export_safetensors(ckpt: dict[str, Any], path: Path) -> None:
    """The model weights of a checkpoint as safetensors, with the registry name, config and data info as
    metadata: a file anyone can load without pickle, and that ``zoo sample``/``zoo eval`` accept. A module's
    extra state (not a tensor: the GAN's update counters) travels as JSON metadata."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in ckpt["model"].items() if isinstance(v, torch.Tensor)}
    extra = {k: v for k, v in ckpt["model"].items() if not isinstance(v, torch.Tensor)}
    meta = {"zoo_format": str(FORMAT), "zoo_version": __version__, "model_name": ckpt["model_name"],
            "config": json.dumps(ckpt["config"]), "data_info": json.dumps(ckpt.get("data_info") or {}),
            "epoch": str(ckpt.get("epoch", 0)), "step": str(ckpt.get("step", 0)), "extra_state": json.dumps(extra)}
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(tmp), metadata=meta)
        os.chmod(tmp, 0o644)  # a file to share (the temporary file's default is private)
        os.replace(tmp, path)
    except Exception as e:  # OSError, or safetensors' own error for an unwritable place
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise ZooError(f"cannot write '{path}' ({str(e).splitlines()[0][:120]}); pick a writable file path") \
            from None


def load_safetensors(path: Path) -> dict[str, Any]:
    """A safetensors file written by ``export_safetensors``, as a checkpoint dict (weights, name, config)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            weights = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # the library raises its own error types for bad headers and truncation
        raise ZooError(f"'{path}' is not a readable safetensors file ({str(e).splitlines()[0][:120]})") from None
    if "model_name" not in meta or "config" not in meta:
        raise ZooError(f"'{path}' is a safetensors file but not one exported by zoo (no model_name/config metadata)")
    try:
        ckpt = {"model_name": meta["model_name"], "config": json.loads(meta["config"]),
                "data_info": json.loads(meta.get("data_info", "{}")),
                "model": {**weights, **json.loads(meta.get("extra_state", "{}"))},
                "epoch": int(meta.get("epoch", 0)), "step": int(meta.get("step", 0)),
                "zoo_version": meta.get("zoo_version")}
    except (ValueError, TypeError) as e:  # JSONDecodeError is a ValueError
        raise ZooError(f"'{path}' has malformed zoo metadata ({str(e)[:120]}); export it again") from None
    _check_parts(ckpt, path)
    return ckpt
