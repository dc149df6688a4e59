"""YAML configs: defaults, strict validation, dotted overrides.

Validation happens before any data or device work: an unknown key, wrong type or bad value raises ConfigError
naming the key. ``train:`` is checked against the schema below; ``model:`` and ``data:`` against the
constructor signatures of the registered model and data module.
"""
from __future__ import annotations

import copy
import inspect
import math
import re
import typing
from pathlib import Path
from typing import Any

import yaml

from .data.base import COMMON_OPTIONS, data_class, data_parameters
from .errors import ConfigError, ZooError, suggest
from .registry import check_model_args, model_info
from .runtime import check_seed

# fused: torch's one-kernel update (fewer launches on a GPU); it rounds differently from the default, ~1e-7
OPTIMIZER = {"name": "adam", "lr": 1e-3, "momentum": 0.0, "weight_decay": 0.0, "betas": [0.9, 0.999],
             "fused": False}
SCHEDULER = {"name": "none", "step_size": 1, "gamma": 0.1, "min_lr": 0.0}
TRAIN = {
    "epochs": 10,
    "batch_size": 64,
    "optimizer": OPTIMIZER,
    "optimizers": {},  # per-group overrides, e.g. {d: {lr: 2e-4}, g: {lr: 2e-4}}
    "scheduler": SCHEDULER,
    "seed": 0,
    "device": "auto",
    "precision": "fp32",  # fp32 | bf16 | fp16 (autocast; fp16 with a gradient scaler, CUDA only)
    "compile": "none",  # none | default | reduce-overhead (CUDA graphs) | max-autotune: torch.compile the step
    "channels_last": False,  # NHWC weights for conv nets (faster on GPUs with tensor cores)
    "cudnn_benchmark": False,  # let cuDNN time its conv algorithms on the first batches (fixed shapes)
    "log_every": 50,  # steps between logged training scalars
    "ckpt_every": 0,  # steps between mid-epoch checkpoints; 0: at the end of each epoch only
    "max_steps": None,  # stop (with a checkpoint) after this many steps: quick runs, kill-and-resume tests
    "eval_batch_size": 1000,
    "grad_clip": None,
    "best_metric": "val/loss",  # best.pt tracks it; none: no best.pt
    "best_mode": "min",  # min: lower is better (losses, errors); max: higher is better (accuracies)
    "keep_last": 2,  # step-N.pt checkpoints kept; --resume falls back to an older one if last.pt is bad
    "on_nonfinite": "stop",  # a NaN/inf loss term: stop (keeping the last good checkpoint) or skip the batch
}
TOP = {"name": None, "model": None, "data": {"name": "mnist"}, "train": TRAIN}

CHOICES = {
    "train.optimizer.name": ("sgd", "adam", "adamw"),
    "train.scheduler.name": ("none", "cosine", "step", "exponential"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.precision": ("fp32", "bf16", "fp16"),
    "train.compile": ("none", "default", "reduce-overhead", "max-autotune"),
    "train.on_nonfinite": ("stop", "skip"),
    "train.best_mode": ("min", "max"),
}
NULLABLE = {"train.max_steps": 0, "train.grad_clip": 0.0}  # null, or a value of this type
POSITIVE = ("train.epochs", "train.batch_size", "train.eval_batch_size", "train.max_steps", "train.keep_last",
            "train.scheduler.step_size", "train.scheduler.gamma")  # step_size 0 divides by zero; gamma <= 0: lr <= 0
NON_NEGATIVE = ("train.log_every", "train.ckpt_every", "train.optimizer.lr", "train.optimizer.weight_decay",
                "train.optimizer.momentum", "train.seed", "train.scheduler.min_lr")


def _type_ok(value, default) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def _type_name(default) -> str:
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping"}.get(type(default), type(default).__name__)


def _merge(schema: dict, given: dict, prefix: str) -> dict:
    """Defaults from ``schema`` overlaid with ``given``; unknown keys and wrong types are errors."""
    if not isinstance(given, dict):
        raise ConfigError(f"'{prefix}' must be a mapping of keys to values, got {type(given).__name__}")
    out = copy.deepcopy(schema)
    for key, value in given.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        if key not in schema:
            raise ConfigError(f"unknown key '{where}'{suggest(key, schema)}; valid keys: {', '.join(schema)}")
        default = schema[key]
        if value is None and default is not None and prefix == "train" and key == "optimizers":
            value = {}  # no per-group overrides
        elif value is None and default is not None:
            fallback = "" if isinstance(default, dict) else f" (default {default!r})"
            raise ConfigError(f"'{where}' must be {_type_name(default)}, got null; set a value or drop the key"
                              f"{fallback}")
        if isinstance(default, dict) and key not in ("optimizers",):
            out[key] = _merge(default, value, where)
        elif not _type_ok(value, default):
            raise ConfigError(f"'{where}' must be {_type_name(default)}, got {value!r}")
        else:
            out[key] = value
    return out


def _check_ctor(values: dict, builder, prefix: str) -> None:
    """Check constructor arguments against the signature: types from defaults, choices from ``Literal[...]``."""
    params = inspect.signature(builder).parameters
    try:
        hints = typing.get_type_hints(builder.__init__ if inspect.isclass(builder) else builder)
    except Exception:  # unresolvable annotations only lose the choice check
        hints = {}
    for key, value in values.items():
        p = params.get(key)
        if p is not None and p.default is not inspect.Parameter.empty and not _type_ok(value, p.default):
            raise ConfigError(f"'{prefix}.{key}' must be {_type_name(p.default)}, got {value!r}")
        nullable = type(None) in typing.get_args(hints.get(key)) or hints.get(key) in (None, typing.Any)
        if value is None and p is not None and p.default not in (None, inspect.Parameter.empty) and not nullable:
            raise ConfigError(f"'{prefix}.{key}' must be {_type_name(p.default)}, got null; set a value or drop "
                              f"the key (default {p.default!r})")
        optional = [a for a in typing.get_args(hints.get(key)) if a is not type(None)]
        if value is not None and len(optional) == 1 and optional[0] in (int, float, str, bool) \
                and not _type_ok(value, optional[0]()):  # `limit: int | None = None`: null or an int
            raise ConfigError(f"'{prefix}.{key}' must be {_type_name(optional[0]())} or null, got {value!r}")
        choices = typing.get_args(hints[key]) if typing.get_origin(hints.get(key)) is typing.Literal else ()
        if choices and value not in choices:
            raise ConfigError(f"'{prefix}.{key}' is {value!r}{suggest(value, choices)}; choose one of: "
                              f"{', '.join(map(str, choices))}")


def _validate_values(cfg: dict) -> None:
    def get(path):
        node = cfg
        for part in path.split("."):
            node = node[part]
        return node

    for path, example in NULLABLE.items():
        if get(path) is not None and not _type_ok(get(path), example):
            raise ConfigError(f"'{path}' must be {_type_name(example)} or null, got {get(path)!r}")
    groups = [f"train.optimizers.{g}" for g in cfg["train"]["optimizers"]]  # each group: an optimizer section
    optimizer_paths = {p.replace("train.optimizer.", f"{g}."): p for g in groups
                       for p in (*CHOICES, *NON_NEGATIVE) if p.startswith("train.optimizer.")}
    for path, choices in {**CHOICES, **{k: CHOICES[v] for k, v in optimizer_paths.items() if v in CHOICES}}.items():
        if get(path) not in choices:
            raise ConfigError(f"'{path}' is {get(path)!r}{suggest(get(path), choices)}; choose one of: "
                              f"{', '.join(choices)}")
    if cfg["train"]["grad_clip"] is not None and cfg["train"]["grad_clip"] < 0:
        raise ConfigError(f"'train.grad_clip' must be >= 0 (0 or null: no clipping), got {cfg['train']['grad_clip']}")
    for path in POSITIVE:
        v = get(path)
        if v is not None and v <= 0:
            raise ConfigError(f"'{path}' must be positive, got {v}")
    for path in (*NON_NEGATIVE, *(k for k, v in optimizer_paths.items() if v in NON_NEGATIVE)):
        if get(path) < 0:
            raise ConfigError(f"'{path}' must be >= 0, got {get(path)}")
    check_seed("train.seed", cfg["train"]["seed"])
    for section in ("train.optimizer", *groups):
        betas = get(f"{section}.betas")
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
            raise ConfigError(f"'{section}.betas' must be two numbers in [0, 1), got {betas}")
        if get(f"{section}.momentum") >= 1:  # the velocity never forgets a gradient: steps grow without bound
            raise ConfigError(f"'{section}.momentum' must be in [0, 1) (0.9 is usual), "
                              f"got {get(f'{section}.momentum')}")
        if get(f"{section}.momentum") and get(f"{section}.name") != "sgd":  # else silently unused
            raise ConfigError(f"'{section}.momentum' is for sgd; {get(f'{section}.name')} takes its momentum from "
                              f"'{section}.betas' (the first value): set momentum to 0 or use sgd")
    scheduler = cfg["train"]["scheduler"]
    if scheduler["min_lr"] and scheduler["name"] != "cosine":  # step and exponential have no floor
        raise ConfigError(f"'train.scheduler.min_lr' is for the cosine schedule only, not {scheduler['name']!r}; "
                          f"drop it or use cosine")


def parse_overrides(overrides: list[str]) -> list[tuple[list[str], Any]]:
    """``a.b=value`` strings; values are parsed as YAML (``2``, ``1e-3``, ``true``, ``[1, 2]``, ``null``)."""
    out = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not k for k in key.split(".")):
            raise ConfigError(f"override '{item}' is not of the form key.sub=value (e.g. train.epochs=2)")
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        out.append((key.split("."), value))
    return out


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    cfg = copy.deepcopy(cfg)
    for path, value in parse_overrides(overrides):
        node = cfg
        for part in path[:-1]:
            if not isinstance(node.get(part, {}), dict):
                raise ConfigError(f"override '{'.'.join(path)}': '{part}' is not a mapping")
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return cfg


MAX_CONFIG_BYTES = 1 << 20  # a config is a page of YAML; a bigger file is a wrong path, not a config


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise ZooError(f"config '{path}' is a directory; give a YAML file such as configs/vae.yaml")
    if not path.is_file():
        raise ZooError(f"config file '{path}' does not exist; see configs/ for the shipped configs")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ZooError(f"config file '{path}' cannot be read ({e.strerror or e})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file '{path}' is {len(raw) / 2**20:.1f} MB, not a config (at most 1 MB of YAML)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(f"config file '{path}' is not UTF-8 text (byte {e.start}, line {line}); save it as UTF-8") \
            from None
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file '{path}' is not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping with model:, data: and train:")
    return cfg


def _floats(node):
    """YAML 1.1 reads ``1e-3`` as a string; turn such strings into numbers where a number is expected."""
    if isinstance(node, dict):
        return {k: _floats(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_floats(v) for v in node]
    if isinstance(node, str):
        try:
            return float(node) if any(c in node for c in "eE") and node[0] in "0123456789.-+" else node
        except ValueError:
            return node
    return node


def _check_finite(node, path: str = "") -> None:
    """NaN and infinity are never a setting: refuse them wherever they appear."""
    if isinstance(node, dict):
        for k, v in node.items():
            _check_finite(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _check_finite(v, f"{path}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"'{path}' is {node}: give a finite number")


def resolve(raw: dict, source: str | None = None) -> dict:
    """Validate a raw config mapping and fill every default: the config a run actually uses."""
    raw = _floats(raw)
    _check_finite(raw)
    for key in raw:
        if key not in TOP:
            raise ConfigError(f"unknown top-level key '{key}'{suggest(key, TOP)}; valid keys: {', '.join(TOP)}")
    model = raw.get("model")
    if isinstance(model, dict) and "name" not in model:
        close = [k for k in model if suggest(k, ["name"])]
        if close:
            raise ConfigError(f"unknown key 'model.{close[0]}' (did you mean 'name'?); 'model.name' is missing")
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        raise ConfigError(f"'model.name' is missing or not a name (got {model!r:.60}): set it to a registered model "
                          f"(see `zoo list`)")
    info = model_info(model["name"])
    margs = {k: v for k, v in model.items() if k != "name"}
    check_model_args(info.name, margs)
    _check_ctor(margs, info.builder, "model")

    if not isinstance(raw.get("data") or {}, dict):
        raise ConfigError(f"'data' must be a mapping of keys to values, got {raw['data']!r:.60}")
    data = dict(raw.get("data") or {})
    data.setdefault("name", "mnist")
    if not isinstance(data["name"], str):
        raise ConfigError(f"'data.name' must be the name of a registered dataset, got {data['name']!r:.60}")
    dparams = data_parameters(data["name"])
    for key in data:
        if key != "name" and key not in dparams:
            raise ConfigError(f"unknown key 'data.{key}' for data '{data['name']}'{suggest(key, dparams)}; "
                              f"valid keys: {', '.join(dparams)}")
    _check_ctor({k: v for k, v in data.items() if k != "name"}, data_class(data["name"]), "data")
    for key, default in COMMON_OPTIONS.items():
        if key in data and not _type_ok(data[key], default):
            raise ConfigError(f"'data.{key}' must be {_type_name(default)}, got {data[key]!r}")
    data_full = {"name": data["name"], **{n: p.default for n, p in dparams.items()
                                         if p.default is not inspect.Parameter.empty}, **data}
    # arguments the data declares (input_shape, vocabularies...) come from it unless the config sets them
    declared = data_class(data["name"]).info_keys
    model_full = {"name": info.name, **{k: v for k, v in info.defaults().items() if k not in declared}, **margs}

    train = _merge(TRAIN, raw.get("train") or {}, "train")
    for group, opts in train["optimizers"].items():  # types from the schema, defaults from train.optimizer
        checked = _merge(OPTIMIZER, opts, f"train.optimizers.{group}")
        train["optimizers"][group] = {**copy.deepcopy(train["optimizer"]), **{k: checked[k] for k in opts}}
    name = raw.get("name")
    if name is not None and not (isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name)):
        raise ConfigError(f"'name' is {name!r}: give a run name of letters, digits, '.', '_' and '-' (it names "
                          f"the run dir)")
    cfg = {"name": name or (Path(source).stem if source else info.name),
           "model": model_full, "data": data_full, "train": train}
    _validate_values(cfg)
    return cfg


def load_config(source: str | Path | dict, overrides: list[str] | None = None) -> dict:
    """Read (a path) or take (a dict) a config, apply dotted overrides, validate and fill defaults."""
    raw = read_yaml(source) if not isinstance(source, dict) else copy.deepcopy(source)
    raw = apply_overrides(raw, overrides or [])
    return resolve(raw, None if isinstance(source, dict) else str(source))


def dump(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)
