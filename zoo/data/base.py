"""The data contract: a registry of data modules and the base class every dataset extends.

A data module is built in two stages, so that a bad config fails before anything heavy happens:

1. ``DataModule(**config)`` checks its arguments and declares ``info``, the plain Python values it hands to the
   model builder (``input_shape``, ``num_classes``, vocabularies...). No tensors are loaded.
2. ``prepare_data()`` downloads or builds caches (under torchrun, rank 0 first); ``setup()`` loads ``splits``.

A split is a tuple of tensors sharing their first dimension (images and labels; padded sequences and lengths).
``batches()`` indexes every tensor of a split with one permutation slice and hands the rows to
``collate(split, parts, generator)``, which returns a :class:`Batch`. ``transform`` (every split: dequantisation)
and ``augment`` (training batches only) draw their randomness from the generator they are given: the trainer's
checkpointed data generator, so a resumed run draws the same noise. Validation, visuals and model
initialisation never see augmented data.

What a model may ask of its data is this class's public surface: ``info``, ``splits``, ``val_split``,
``size``, ``tensors``, ``full_train``, ``batches`` and ``num_batches``. Nothing dataset-specific.
"""
from __future__ import annotations

import inspect
from typing import Any, Iterator, Sequence

import torch

from ..errors import ConfigError, ZooError, suggest
from ..runtime import check_seed

_DATA: dict[str, type["DataModule"]] = {}
_loaded = False

#: Options every data module takes besides its own: ``input_noise`` adds N(0, sigma^2) to the first tensor of
#: every training batch (instance noise; a ridge penalty for linear models), ``shuffle: false`` keeps the
#: training split's stored order in every epoch (hand-worked examples), ``bucket: N`` batches items of similar
#: size together (pools of N batches sorted by ``item_sizes``: less padding for ragged data; 0 = off).
COMMON_OPTIONS: dict[str, Any] = {"input_noise": 0.0, "shuffle": True, "bucket": 0}
MAX_BUCKET = 100_000  # batches per pool: beyond any epoch, so it means "sort the whole epoch"


def register_data(name: str):
    """Class decorator: make a DataModule available as ``data: {name: NAME}``. Duplicate names are errors."""

    def deco(cls):
        if name in _DATA:
            raise ValueError(f"data module '{name}' is registered twice ({_DATA[name].__module__} and "
                             f"{cls.__module__})")
        _DATA[name] = cls
        cls.registry_name = name
        return cls

    return deco


def _ensure_loaded() -> None:
    """Import the built-in datasets, then any package declaring a ``zoo.data`` entry point. The flag is set only
    after every import succeeded, so a broken module is an error every time, not a silently short registry."""
    global _loaded
    if _loaded:
        return
    from importlib.metadata import entry_points

    import importlib

    importlib.import_module(__package__)  # the package imports every dataset module, which registers it

    for ep in entry_points(group="zoo.data"):
        ep.load()
    _loaded = True


def data_names() -> list[str]:
    _ensure_loaded()
    return sorted(_DATA)


def data_class(name: str) -> type["DataModule"]:
    _ensure_loaded()
    if name not in _DATA:
        raise ConfigError(f"unknown data.name '{name}'{suggest(name, _DATA)}; "
                          f"choose one of: {', '.join(sorted(_DATA))}")
    return _DATA[name]


def data_parameters(name: str) -> dict[str, inspect.Parameter]:
    """The keys ``data:`` may set for this dataset: its constructor's, then the common options."""
    params = {n: p for n, p in inspect.signature(data_class(name)).parameters.items() if n != "self"}
    for key, default in COMMON_OPTIONS.items():
        params.setdefault(key, inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=default))
    return params


def build_data(name: str, **kwargs) -> "DataModule":
    """The data module with its arguments checked and ``info`` declared, no tensors loaded (cheap)."""
    params = data_parameters(name)
    for key in kwargs:
        if key not in params:
            raise ConfigError(f"unknown key 'data.{key}' for data '{name}'{suggest(key, params)}")
    if "seed" in kwargs:
        check_seed("data.seed", kwargs["seed"])
    common = {k: kwargs.pop(k, v) for k, v in COMMON_OPTIONS.items()}
    if not (isinstance(common["input_noise"], (int, float)) and common["input_noise"] >= 0):
        raise ConfigError(f"data.input_noise={common['input_noise']!r} must be a standard deviation >= 0")
    bucket = common["bucket"]
    if isinstance(bucket, bool) or not isinstance(bucket, int) or not 0 <= bucket <= MAX_BUCKET:
        raise ConfigError(f"data.bucket={bucket!r} must be a whole number of batches in [0, {MAX_BUCKET}] "
                          f"(0: no bucketing)")
    if bucket and data_class(name).item_sizes is DataModule.item_sizes:
        raise ConfigError(f"data.bucket={bucket}: data '{name}' has items of one size, nothing to bucket by; "
                          f"remove data.bucket")
    if bucket and not common["shuffle"]:
        raise ConfigError("data.bucket needs data.shuffle: true (it sorts pools of a shuffled order); "
                          "remove one of them")
    from ..registry import build_or_explain

    defaults = {n: p.default for n, p in params.items() if p.default is not inspect.Parameter.empty}
    module = build_or_explain(_DATA[name], kwargs, kwargs, defaults, "data", f"data '{name}'")
    module.input_noise, module.shuffle, module.bucket = (float(common["input_noise"]), bool(common["shuffle"]),
                                                         bucket)
    undeclared = set(module.info) - set(module.info_keys)
    if undeclared:  # a contract bug, not a user error: the info keys are what configs and checkpoints rely on
        raise TypeError(f"data module '{name}' hands undeclared info keys {sorted(undeclared)} to the model")
    return module


def create_data(name: str, **kwargs) -> "DataModule":
    """Build, prepare and set up a data module: the tensors are loaded when this returns."""
    module = build_data(name, **kwargs)
    module.prepare_data()
    return module.setup()


class Batch(tuple):
    """The tensors of one batch (unpack it like a tuple) and ``num_items``, the count it stands for.

    ``num_items`` is what validation averages and throughput are weighted by: images or graphs by default,
    target tokens for a batch of sequence pairs. It may be an int or a 0-d tensor (no host sync to compute it).
    """

    num_items: int | torch.Tensor

    def __new__(cls, parts: Sequence[torch.Tensor], num_items: int | torch.Tensor | None = None):
        batch = super().__new__(cls, parts)
        batch.num_items = len(parts[0]) if num_items is None else num_items
        return batch


def num_items(batch) -> int | torch.Tensor:
    """How many items ``batch`` counts for (its ``num_items``, else its first tensor's length)."""
    n = getattr(batch, "num_items", None)
    return len(batch[0]) if n is None else n


class DataModule:
    """Train/val/test tensors plus the batching every model shares. Subclass, register, and define
    ``__init__`` (check arguments, set ``self.info``) and ``setup`` (fill ``self.splits``)."""

    #: The ``info`` keys this dataset hands to the model builder; a model receives those its constructor accepts.
    info_keys: tuple[str, ...] = ("input_shape", "num_classes")
    registry_name: str = ""
    input_noise: float = 0.0
    shuffle: bool = True
    bucket: int = 0
    info: dict[str, Any]
    splits: dict[str, tuple[torch.Tensor, ...]]

    # ---- building ------------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Download or build what ``setup`` reads (files, caches). Called once, by rank 0 first."""

    def setup(self) -> "DataModule":
        """Load the tensors into ``self.splits``; returns self."""
        raise TypeError(f"{type(self).__name__} must define setup()")

    def to(self, device: torch.device) -> "DataModule":
        self.splits = {k: tuple(t.to(device) for t in parts) for k, parts in self.splits.items()}
        return self

    # ---- what models may ask -------------------------------------------------------------------------------
    @property
    def val_split(self) -> str:
        """The split validation runs on: ``val`` when the data has one, else ``test``."""
        return "val" if "val" in self.splits else "test"

    def size(self, split: str) -> int:
        return self.tensors(split)[0].shape[0]

    def tensors(self, split: str) -> tuple[torch.Tensor, ...]:
        """The whole stored split, un-transformed (model initialisation and evaluation read it)."""
        if split not in self.splits:
            raise ZooError(f"this data has no '{split}' split; choose one of: {', '.join(self.splits)}")
        return self.splits[split]

    def full_train(self) -> tuple[torch.Tensor, ...]:
        """The whole training set before any validation split or limit, in its published order (some
        metrics are defined on it). Datasets without such a set return the train split."""
        return self.tensors("train")

    def item_sizes(self, split: str) -> torch.Tensor:
        """What a ragged item costs, for ``bucket``: [N] or [N, K] sizes (the rows' lengths, say), the first
        column sorted on first. Data whose items are all one size do not define it."""
        raise TypeError(f"{type(self).__name__} declares no item sizes")

    def baselines(self, split: str) -> dict[str, float]:
        """Scores of reference methods the data itself defines on ``split`` (a Bayes-optimal rule, say), for a
        model's ``evaluate`` to report beside its own; none by default."""
        return {}

    # ---- batching --------------------------------------------------------------------------------------------
    def transform(self, split: str, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Per-batch transform of the first tensor on every split (dequantisation noise, say); identity here."""
        return x

    def augment(self, batch: Batch, generator: torch.Generator | None) -> Batch:
        """Random augmentation of a training batch; only the trainer's training batches get it. Identity here."""
        return batch

    def collate(self, split: str, parts: tuple[torch.Tensor, ...], generator: torch.Generator | None) -> Batch:
        """Rows of ``split`` -> a Batch. Default: ``transform`` the first tensor, keep the others as they are.
        Ragged data overrides this (trim to the longest item, build masks, set ``num_items``)."""
        return Batch((self.transform(split, parts[0], generator), *parts[1:]))

    def batches(self, split: str, batch_size: int, *, order: torch.Tensor | None = None, skip: int = 0,
                generator: torch.Generator | None = None, augment: bool = False) -> Iterator[Batch]:
        """Batches of ``split`` in ``order`` (a permutation, or one process's shard of it) or in sequence,
        starting after ``skip`` batches. ``augment`` (training split only) applies ``self.augment``."""
        if augment and split != "train":
            raise ValueError(f"augmentation is for the training split only, not '{split}'")
        parts = self.tensors(split)
        if order is None:
            n = parts[0].shape[0]
            rows = (slice(i, i + batch_size) for i in range(skip * batch_size, n, batch_size))
        else:  # one split into views, not a Python slice per batch; kept for the epoch, so a loop that stops
            # and goes on in the same epoch (zoo train's max_steps, scripts/bench.py's windows) pays for it once
            memo = getattr(self, "_views", None)
            if memo is None or memo[0] is not order or memo[1] != batch_size:
                views = () if not len(order) else (order,) if len(order) <= batch_size else order.split(batch_size)
                memo = self._views = (order, batch_size, views)  # full batch (one step an epoch): no split
            rows = memo[2][skip:]  # nothing left (a resume after the epoch's last batch): no batch, not an empty one
        for idx in rows:
            batch = self.collate(split, tuple(t[idx] for t in parts), generator)
            yield self._add_input_noise(self.augment(batch, generator), generator) if augment else batch

    def _add_input_noise(self, batch: Batch, generator: torch.Generator | None) -> Batch:
        if not self.input_noise:
            return batch
        x = batch[0]
        noise = torch.randn(x.shape, generator=generator, device="cpu").to(x.device, x.dtype) * self.input_noise
        return Batch((x + noise, *batch[1:]), batch.num_items)

    def epoch_order(self, seed: int, epoch: int, batch_size: int | None = None) -> torch.Tensor:
        """The training split's order in ``epoch``: a permutation that depends on (seed, epoch) alone, or the
        stored order with ``shuffle: false``. With ``bucket`` and the (global) ``batch_size``, the batches of
        that permutation are regrouped by size (see ``_bucketed``)."""
        n = self.size("train")
        bucket = self.bucket if batch_size and self.shuffle else 0
        key = (seed, epoch, n, self.shuffle, bucket and batch_size)
        if (memo := getattr(self, "_order", None)) is not None and memo[0] == key:
            return memo[1]  # the same tensor, so batches() reuses its split of it too
        if not self.shuffle:
            order = torch.arange(n)
        else:
            if (gen := getattr(self, "_order_generator", None)) is None:  # one generator, re-seeded every epoch
                gen = self._order_generator = torch.Generator()
            order = torch.randperm(n, generator=gen.manual_seed(seed * 1_000_003 + epoch))
            if bucket:
                order = self._bucketed(order, batch_size, gen)
        self._order = (key, order)
        return order

    def _bucketed(self, order: torch.Tensor, batch_size: int, gen: torch.Generator) -> torch.Tensor:
        """torchtext's BucketIterator pools: each run of ``bucket`` batches of the permutation is sorted by
        ``item_sizes`` (stably, so equal sizes keep their random order), cut into batches, and the full batches
        of the epoch are shuffled; a short last batch stays last, so every batch keeps its place in the
        permutation's split. Items are padded to their batch's longest, so similar sizes mean less padding."""
        sizes = self.item_sizes("train").cpu()  # once an epoch, not cached: always the split as it is now
        sizes = sizes if sizes.dim() == 2 else sizes[:, None]
        pools = []
        for pool in order.split(self.bucket * batch_size):
            rank = torch.arange(len(pool))
            for col in reversed(range(sizes.shape[1])):  # lexicographic: the last key first, each sort stable
                rank = rank[torch.sort(sizes[pool[rank], col], stable=True).indices]
            pools.append(pool[rank])
        order = torch.cat(pools)
        full = len(order) // batch_size * batch_size
        rows = order[:full].view(-1, batch_size)
        return torch.cat([rows[torch.randperm(len(rows), generator=gen)].flatten(), order[full:]])

    def num_batches(self, split: str, batch_size: int, order: torch.Tensor | None = None) -> int:
        n = self.size(split) if order is None else order.shape[0]
        return -(-n // batch_size)


def check_range(key: str, value, low=None, high=None, *, allow_none: bool = False) -> None:
    """One-line ConfigError unless ``low <= value <= high`` (either bound optional)."""
    if value is None and allow_none:
        return
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"in [{low}, {high}]" if low is not None and high is not None else (
            f">= {low}" if low is not None else f"<= {high}")
        raise ConfigError(f"data.{key}={value!r} must be {bounds}")


def split_off(parts: tuple[torch.Tensor, ...], size: int, seed: int) -> tuple[tuple, tuple]:
    """(rest, held_out): ``size`` rows carved from every tensor of ``parts`` by a seeded permutation."""
    perm = torch.randperm(len(parts[0]), generator=torch.Generator().manual_seed(seed))
    held, rest = perm[:size], perm[size:]
    return tuple(t[rest] for t in parts), tuple(t[held] for t in parts)

