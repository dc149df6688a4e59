"""The contract between a model and the trainer.

The trainer knows no model by name. Each step it asks the model which optimizers to step, in which order
(``update_schedule``), calls ``training_step(batch, optimizer=name)`` for each, backpropagates the returned
``"loss"`` and steps that optimizer. Everything else in the returned dict is logged under its name.

Models trained by a rule rather than a gradient (k-means by Lloyd, competitive learning, EM) set
``manual_update = True``: the trainer then calls ``training_step`` under ``torch.no_grad()`` and the model
updates its own parameters; the returned terms are only logged.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

Batch = Any  # whatever the data module yields: usually (x, y) tensors already on the device


class ZooModel(nn.Module):
    """Base class of every registered model. Override what applies; defaults fit a one-optimizer model."""

    #: True for rule-based models: no optimizer is built and no backward pass is run.
    manual_update: bool = False

    #: True when ``evaluate`` reads ``ctx.options["data"]`` (``zoo eval --data PATH``: held-out items in a file).
    evaluates_files: bool = False

    #: True when ``evaluate`` reads ``ctx.options["views"]`` (``zoo eval --views V``: voting over augmented copies).
    evaluates_views: bool = False

    #: True when ``evaluate`` reads ``ctx.options["iw_samples"]`` (``zoo eval --iw-samples K``: a likelihood bound).
    evaluates_iw_samples: bool = False

    # ---- training -------------------------------------------------------------------------------------------
    def param_groups(self) -> dict[str, Iterable[nn.Parameter]]:
        """Parameters of each optimizer, by name. One optimizer named ``main`` unless overridden (GAN: d, g)."""
        return {"main": list(self.parameters())}

    def update_schedule(self) -> list[str]:
        """Optimizer names to step, in order, for each batch (GAN: ``["d"] * k + ["g"]``); asked once, when
        training starts."""
        return list(self.param_groups())

    def setup(self, data) -> None:
        """Called before every fit, fresh or resumed, with the data module: take references the run needs."""

    def on_fit_start(self, data) -> None:
        """Data-dependent initialisation before the first step of a fresh run (not called on resume)."""

    def training_step(self, batch: Batch, optimizer: str = "main") -> dict[str, torch.Tensor]:
        """Named scalar terms of one step; ``"loss"`` is what gets backpropagated (nats per item, say)."""
        raise TypeError(f"{type(self).__name__} must define training_step")

    def validation_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Named scalar metrics of one batch, averaged over the validation set weighted by batch size."""
        out = {}
        for name in self.update_schedule():
            out.update(self.training_step(batch, optimizer=name))
        return out

    def on_train_batch_end(self, step: int) -> None:
        """Hook after every optimizer of the schedule has stepped on a batch; ``step`` counts batches from 1
        (GAN: the running average of the generator's weights)."""

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        """Hook after each training epoch; may return extra scalars to log (rule-based models finish here)."""
        return {}

    # ---- inspection (optional) --------------------------------------------------------------------------------
    def visuals(self, batch: Batch) -> dict[str, Any]:
        """Images to log each epoch: name -> tensor [N, C, H, W] in [0, 1] (a grid is made) or a matplotlib figure."""
        return {}

    def artifacts(self, data, run_dir) -> dict[str, Any]:
        """End-of-training outputs, name -> image tensor (or ``Grid``), matplotlib figure or Markdown text: the
        trainer writes each to the run dir as NAME.png/.txt and logs it to TensorBoard."""
        return {}

    def evaluate(self, data, ctx) -> dict[str, Any]:
        """Metrics for ``zoo eval`` on the held-out data, with baselines computed on the same data."""
        return {}

    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")
