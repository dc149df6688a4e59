"""Optimizers and learning-rate schedules from the ``train.optimizer`` / ``train.scheduler`` config sections."""
from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from .errors import ConfigError, suggest


def build_optimizers(model, t: dict, foreach: bool | None = True
                     ) -> tuple[dict[str, torch.optim.Optimizer], dict[str, Any]]:
    """One optimizer (and schedule) per parameter group the model declares; none for rule-based models.
    ``train.optimizers.NAME`` overrides ``train.optimizer`` for group NAME. ``foreach``: see build_optimizer."""
    optimizers: dict[str, torch.optim.Optimizer] = {}
    schedulers: dict[str, Any] = {}
    if model.manual_update:
        return optimizers, schedulers
    groups = model.param_groups()
    for g in t["optimizers"]:
        if g not in groups:
            raise ConfigError(f"unknown key 'train.optimizers.{g}'{suggest(g, groups)}; this model's "
                              f"optimizers are: {', '.join(groups)}")
    for name, params in groups.items():
        optimizers[name] = build_optimizer(params, t["optimizers"].get(name, t["optimizer"]), foreach)
        sched = build_scheduler(optimizers[name], t["scheduler"], t["epochs"])
        if sched is not None:
            schedulers[name] = sched
    return optimizers, schedulers


def clear_grads(opt: torch.optim.Optimizer) -> None:
    """``opt.zero_grad(set_to_none=True)`` without its profiler range, which costs 6-7 us a call on a CPU."""
    for g in opt.param_groups:
        for p in g["params"]:
            p.grad = None


def apply_update(opt: torch.optim.Optimizer, loss: torch.Tensor, scaler, dist, grad_clip: float | None) -> None:
    """Backpropagate ``loss`` into ``opt``'s parameters, average the gradients over processes, clip, step.
    A plain fp32 single-process step is exactly zero_grad, backward, step: nothing else runs per step."""
    clear_grads(opt)
    if not scaler.is_enabled() and not dist.enabled and not grad_clip:
        loss.backward()
        opt.step()
        return
    params = [p for g in opt.param_groups for p in g["params"]]
    scaler.scale(loss).backward()
    dist.average_grads(params)
    if grad_clip:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, grad_clip, foreach=True)  # as build_optimizer: same numbers
    scaler.step(opt)
    scaler.update()


def build_optimizer(params, o: dict, foreach: bool | None = True) -> torch.optim.Optimizer:
    """The ``train.optimizer`` section's optimizer. Unless ``fused``, the update runs as one multi-tensor
    (``foreach``) kernel per operation on every device: torch's own default does so on CUDA but loops over the
    parameters in Python on a CPU, milliseconds a step for models of many tensors (README, Speed), and both give
    the same weights bit for bit (tests/test_speed.py -k foreach). ``foreach=None``: torch's default,
    what a hand-written loop gets (scripts/bench.py's DataLoader loop)."""
    params = [p for p in params if p.requires_grad]
    impl = {"fused": True} if o["fused"] else ({"foreach": foreach} if foreach is not None else {})
    if o["name"] == "sgd":
        return torch.optim.SGD(params, lr=o["lr"], momentum=o["momentum"], weight_decay=o["weight_decay"], **impl)
    cls = torch.optim.Adam if o["name"] == "adam" else torch.optim.AdamW
    return cls(params, lr=o["lr"], betas=tuple(o["betas"]), weight_decay=o["weight_decay"], **impl)


def load_optimizer_state(opt: torch.optim.Optimizer, state: dict) -> None:
    """``opt.load_state_dict(state)``, keeping the update's implementation (foreach, fused) that ``opt`` was built
    with: torch restores a checkpoint's, and one saved before zoo chose foreach would slow a resumed CPU run back
    to the Python loop (with the same numbers)."""
    impl = [{k: g[k] for k in ("foreach", "fused") if k in g} for g in opt.param_groups]
    opt.load_state_dict(state)
    for group, keep in zip(opt.param_groups, impl):
        group.update(keep)


def fit_horizon(scheduler, epochs: int) -> None:
    """A resumed run whose ``train.epochs`` changed: its cosine now ends at the new last epoch (the saved state
    kept the old one, so added epochs would train at the final rate, or climb a second cosine). The rate moves to
    the new curve's value at the current epoch; with ``epochs`` unchanged nothing moves."""
    if not isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR) or scheduler.T_max == epochs:
        return
    scheduler.T_max = epochs
    t = min(scheduler.last_epoch, epochs)
    for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = scheduler.eta_min + (base - scheduler.eta_min) * (1 + math.cos(math.pi * t / epochs)) / 2
    scheduler._last_lr = [g["lr"] for g in scheduler.optimizer.param_groups]


def restore_schedulers(schedulers: dict, states: dict, epochs: int) -> None:
    """A checkpoint's scheduler states back in place, each cosine then fitted to ``epochs`` (see fit_horizon)."""
    for name, scheduler in schedulers.items():
        scheduler.load_state_dict(states[name])
        fit_horizon(scheduler, epochs)


def step_schedulers(schedulers: dict) -> None:
    """Each scheduler's once-per-epoch step. Torch warns when this process has not stepped the optimizer first: a
    false alarm for a run resumed after its first epoch's last step (that epoch's steps all ran before the stop)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler")
        for scheduler in schedulers.values():
            scheduler.step()


def build_scheduler(opt, s: dict, epochs: int):
    """Stepped once per epoch; None for ``none``."""
    if s["name"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=s["min_lr"])
    if s["name"] == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=s["step_size"], gamma=s["gamma"])
    if s["name"] == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(opt, gamma=s["gamma"])
    return None
