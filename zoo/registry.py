"""Model registry: ``@register_model`` on a ZooModel class or builder, ``create_model``, ``list_models``."""
from __future__ import annotations

import fnmatch
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import ConfigError, ZooError, suggest

@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: Callable[..., Any]
    family: str
    description: str
    config: str | None = None  # the configs/*.yaml that trains it
    tags: tuple[str, ...] = field(default_factory=tuple)

    def parameters(self) -> dict[str, inspect.Parameter]:
        """Constructor arguments by name (what ``model:`` in a config may set)."""
        params = inspect.signature(self.builder).parameters
        return {n: p for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    def defaults(self) -> dict[str, Any]:
        return {n: p.default for n, p in self.parameters().items() if p.default is not inspect.Parameter.empty}


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(name: str, *, family: str, description: str, config: str | None = None, tags=()):
    """Register a model class (or builder function) under ``name``. Duplicate names are errors."""

    def deco(builder):
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is registered twice ({_REGISTRY[name].builder.__module__} and "
                             f"{builder.__module__})")
        _REGISTRY[name] = ModelInfo(name, builder, family, description, config, tuple(tags))
        return builder

    return deco


_loaded = False


def _ensure_loaded() -> None:
    """Import the built-in models, then any package that declares a ``zoo.models`` entry point."""
    global _loaded
    if _loaded:
        return
    from importlib.metadata import entry_points

    from . import models  # noqa: F401  (importing the package registers every model module)

    for ep in entry_points(group="zoo.models"):
        ep.load()
    _loaded = True  # only now: a family that failed to import fails every call, never a short registry


def model_info(name: str) -> ModelInfo:
    _ensure_loaded()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model '{name}'{suggest(name, _REGISTRY)}; `zoo list` shows the registered models")
    return _REGISTRY[name]


def list_models(pattern: str = "*") -> list[ModelInfo]:
    """Registered models whose name matches the shell-style ``pattern`` (``gan*``, ``*ae``), sorted."""
    _ensure_loaded()
    return [_REGISTRY[n] for n in sorted(_REGISTRY) if fnmatch.fnmatchcase(n, pattern)]


def check_model_args(name: str, kwargs: dict[str, Any], prefix: str = "model") -> None:
    """Unknown constructor arguments fail with the key named and the closest valid one suggested."""
    params = model_info(name).parameters()
    for key in kwargs:
        if key not in params:
            raise ConfigError(f"unknown key '{prefix}.{key}' for model '{name}'{suggest(key, params)}; "
                              f"valid keys: {', '.join(params)}")


def build_model(section: dict[str, Any], data_info: dict[str, Any] | None = None):
    """The model a config's ``model:`` section names, built with its other keys and the data's info."""
    return create_model(section["name"], data_info, **{k: v for k, v in section.items() if k != "name"})


def create_model(name: str, data_info: dict[str, Any] | None = None, **kwargs):
    """Build a registered model from its config arguments and the data's declared ``info``.

    Info keys the constructor does not accept are dropped (a k-means net needs no ``num_classes``). Any failure
    of the constructor, whatever its exception type, becomes one ConfigError naming the responsible
    ``model.<key>`` when resetting that key to its default makes the model build.
    """
    info = model_info(name)
    params = info.parameters()
    check_model_args(name, kwargs)
    args = {k: v for k, v in (data_info or {}).items() if k in params}
    args.update(kwargs)
    missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in args]
    if missing:
        raise ConfigError(f"model '{name}' needs {', '.join('model.' + m for m in missing)}")
    return build_or_explain(info.builder, args, kwargs, info.defaults(), "model", f"model '{name}'")


def build_or_explain(builder: Callable[..., Any], args: dict[str, Any], given: dict[str, Any],
                     defaults: dict[str, Any], prefix: str, what: str):
    """``builder(**args)``; any failure, whatever its exception type, becomes one ConfigError that names the
    ``prefix.<key>`` of ``given`` whose reset to its default lets the object build, when there is one."""
    try:
        return builder(**args)
    except ZooError:  # the constructor's own one-line message (a missing file, a bad value) says it best
        raise
    except Exception as e:  # constructors validate their own values; torch raises RuntimeError for others
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        for key in given:
            if key not in defaults or given[key] == defaults[key]:
                continue
            try:
                builder(**{**args, key: defaults[key]})
            except Exception:
                continue
            raise ConfigError(f"{prefix}.{key}={given[key]!r} is not valid for {what}: {reason}") from None
        raise ConfigError(f"{what} cannot be built from this config: {reason}") from None
