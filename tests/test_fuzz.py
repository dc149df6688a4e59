"""Config fuzzing: thousands of mutations of the shipped configs through `zoo train` (each config's model and data
sections, and the train section's keys once).

Mutations that can never be valid (unknown or misspelt keys at every level, wrong types, NaN/inf, broken files,
a missing model) must end with exit status 2 and one line naming the key or line, never a traceback, never a
run dir, and before any data is loaded. Extreme values (negative, zero, huge) must be either refused that way
or accepted as a valid config; the test stops accepted configs where the trainer would load the data.
"""
from __future__ import annotations

import copy
import functools
import random
import warnings
from pathlib import Path

import pytest
import yaml

from zoo.cli import main
from zoo.config import load_config
from zoo.trainer import Trainer

ROOT = Path(__file__).parents[1]
SHIPPED = sorted((ROOT / "configs").glob("*.yaml"))


class ReachedData(Exception):
    """Raised where the trainer would load tensors: the config passed every check."""


def leaves(node, path=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from leaves(v, (*path, k))
    else:
        yield path, node


def mappings(node, path=()):
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from mappings(v, (*path, k))


def set_at(cfg: dict, path: tuple, value) -> dict:
    out = copy.deepcopy(cfg)
    node = out
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return out


def typo(key: str, rng: random.Random) -> str:
    i = rng.randrange(len(key))
    return key[:i] + key[i + 1:] if len(key) > 3 and rng.random() < 0.5 else key[:i] + "x" + key[i:]


def wrong_types(value) -> list:
    """Values no setting of this kind accepts."""
    if isinstance(value, bool):
        return ["maybe", 3, [True]]
    if isinstance(value, (int, float)):
        return ["abc", [1, 2], {"a": 1}]
    if isinstance(value, str):
        return [{"a": 1}, [value]]
    if isinstance(value, list):
        return ["x", {"a": 1}]
    return [{"a": 1}, [[1]]]  # null in the file: a mapping or a nested list fits no scalar setting


def mutations(raw: dict, seed: int) -> tuple[list, list]:
    """(must_fail, may_pass): lists of (label, needle, text) where text is the mutated file's bytes."""
    rng = random.Random(seed)
    dump = lambda c: yaml.safe_dump(c, sort_keys=False).encode()  # noqa: E731
    must, may = [], []
    for path, node in mappings(raw):
        where = ".".join(map(str, path))
        must.append((f"unknown key in {where or 'top'}", "zzz_unknown",
                     dump(set_at(raw, (*path, "zzz_unknown"), 1) if path else {**raw, "zzz_unknown": 1})))
        for key in node:
            bad = typo(str(key), rng)
            if bad in node:
                continue
            renamed = {(bad if k == key else k): v for k, v in node.items()}
            must.append((f"misspelt {where}.{key}", bad, dump(set_at(raw, path, renamed) if path else renamed)))
    for path, value in leaves(raw):
        where = ".".join(map(str, path))
        for bad in wrong_types(value):
            must.append((f"{where}={bad!r}", str(path[-1]), dump(set_at(raw, path, bad))))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            for bad in (float("nan"), float("inf"), -float("inf")):
                must.append((f"{where}={bad}", str(path[-1]), dump(set_at(raw, path, bad))))
            for bad in (-1, 0, 10**12, -1e-3, 1e12):
                may.append((f"{where}={bad}", str(path[-1]), dump(set_at(raw, path, bad))))
    text = dump(raw)
    must += [
        ("invalid YAML", "line", text + b"\ntrain: [unclosed\n"),
        ("non-UTF-8 bytes", "UTF-8", text.replace(b"name", b"n\xffme", 1)),
        ("empty file", "mapping", b""),
        ("a list, not a mapping", "mapping", b"- model\n- data\n"),
        ("10 MB file", "MB", b"# padding\n" * (1 << 20)),
        ("no model section", "model.name", dump({k: v for k, v in raw.items() if k != "model"})),
        ("model without a name", "model.name", dump({**raw, "model": {k: v for k, v in raw["model"].items()
                                                                        if k != "name"}})),
    ]
    return must, may


def about_train(label: str) -> bool:
    return label.startswith(("train", "misspelt train", "unknown key in train"))


@functools.cache
def train_owner() -> dict[str, str]:
    """Each mutation of the train section -> the first shipped config that makes it. One schema checks that section
    for every model, so each of its mutations runs once, not once per config (``train.optimizers.d`` of the GAN is
    the GAN's own); model and data sections are each config's own and all run."""
    owner = {}
    for p in SHIPPED:
        must, may = mutations(load_config(str(p)), seed=len(p.stem))
        for label, _, _ in must + may:
            if about_train(label):
                owner.setdefault(label, p.stem)
    return owner


@pytest.fixture
def no_data(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # any run dir would appear here

    def reached(self):
        raise ReachedData

    monkeypatch.setattr(Trainer, "_load_data", reached)
    monkeypatch.setenv("ZOO_DATA", str(tmp_path / "no-data-here"))
    return tmp_path


def run_train(path: Path, capsys) -> tuple[int | None, str]:
    try:
        code = main(["train", str(path), "--quiet"])
    except ReachedData:
        code = None
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("config", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_mutated_configs_fail_cleanly_before_any_data(config, no_data, capsys):
    raw = load_config(str(config))  # every key, defaults filled: mutations reach every setting
    must, may = mutations(raw, seed=len(config.stem))
    assert len(must) + len(may) >= 200, (config.name, len(must) + len(may))
    must, may = ([m for m in items if not about_train(m[0]) or train_owner()[m[0]] == config.stem]
                 for items in (must, may))
    path = no_data / "fuzzed.yaml"
    for label, needle, text in must:
        path.write_bytes(text)
        code, err = run_train(path, capsys)
        assert code == 2, f"{config.name}, {label}: accepted or crashed (exit {code}): {err[-300:]}"
        assert len(err.splitlines()) == 1 and "Traceback" not in err, f"{config.name}, {label}: {err}"
        assert needle in err, f"{config.name}, {label}: the error does not name {needle!r}: {err}"
    for label, needle, text in may:
        path.write_bytes(text)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            code, err = run_train(path, capsys)
        assert code in (2, None), f"{config.name}, {label}: exit {code}: {err[-300:]}"
        empty = [w for w in caught if "zero-element" in str(w.message)]
        assert code == 2 or not empty, f"{config.name}, {label}: accepted a model with an empty layer"
        if code == 2:
            assert len(err.splitlines()) == 1 and "Traceback" not in err and needle in err, \
                f"{config.name}, {label}: {err}"
    assert not (no_data / "runs").exists() and not (no_data / "no-data-here").exists()
    directory = no_data / "a_dir.yaml"
    directory.mkdir()
    code, err = run_train(directory, capsys)
    assert code == 2 and "directory" in err
