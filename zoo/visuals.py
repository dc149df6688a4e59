"""What models show: image grids, matplotlib figures and text tables, written to TensorBoard and the run dir.

A model's ``visuals(batch)`` / ``artifacts(data, run_dir)`` return ``name -> value`` where a value is an image
tensor [N, C, H, W] in [0, 1] (shown as a square-ish grid), a ``Grid`` (the same, ``nrow`` images a row), a
matplotlib figure, or text (a str, Markdown; see ``table``).
``write`` is the one place those values are turned into files and TensorBoard entries.
"""
from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Any, Collection, NamedTuple, Sequence

import torch


class Grid(NamedTuple):
    """Images [N, C, H, W] in [0, 1] laid out ``nrow`` a row, where the rows mean something (a latent traversal's
    steps, k centres side by side): the default square-ish grid would wrap them at sqrt(N)."""
    images: torch.Tensor
    nrow: int


def is_image_batch(t) -> bool:
    """A batch of images [N, C, H, W] with 1 (grey) or 3 (RGB) channels: what a grid can show."""
    return isinstance(t, torch.Tensor) and t.dim() == 4 and t.shape[1] in (1, 3)


def to_image_grid(images: torch.Tensor, nrow: int | None = None) -> torch.Tensor:
    from torchvision.utils import make_grid

    if not is_image_batch(images):  # make_grid would draw [N, D] points as one N x D picture, silently
        raise TypeError(f"an image grid needs a tensor [N, C, H, W] with 1 or 3 channels, got shape "
                        f"{tuple(images.shape)}")
    images = images.detach().float().cpu().clamp(0, 1)
    return make_grid(images, nrow=nrow or max(1, int(math.sqrt(len(images)))), padding=2, pad_value=1.0)


@contextlib.contextmanager
def replacing(path: Path):
    """Yields a temp path beside ``path`` (same suffix, so writers pick the format) and renames it to ``path``
    once written: a failed write (a full disk) leaves the previous file whole, not a truncated one."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_png(tensor_or_figure, path: Path, nrow: int | None = None) -> None:
    """An image tensor as a grid PNG (``nrow`` images a row), or a matplotlib figure, at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        if isinstance(tensor_or_figure, torch.Tensor):
            from torchvision.utils import save_image

            save_image(to_image_grid(tensor_or_figure, nrow), str(tmp))
        else:
            tensor_or_figure.savefig(tmp, dpi=100, bbox_inches="tight")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (TensorBoard's text tab renders it; the .txt file stays readable)."""
    def cell(v):
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(cell, r)) + " |" for r in rows]
    return "\n".join(lines)


def write(items: dict[str, Any], writer, step: int, directory: Path | None, suffix: str = "",
          skip_tensorboard: Collection[str] = ()) -> None:
    """Log each visual to TensorBoard under its name (but those in ``skip_tensorboard``) and, when ``directory``
    is given, to NAME{suffix}.png/.txt there."""
    for name, v in items.items():
        shown = name not in skip_tensorboard
        if isinstance(v, str):
            if shown:
                writer.add_text(name, v, step)
            if directory is not None:
                directory.mkdir(parents=True, exist_ok=True)
                (directory / f"{name}{suffix}.txt").write_text(v + "\n", encoding="utf-8")
        elif isinstance(v, (torch.Tensor, Grid)):
            v, nrow = v if isinstance(v, Grid) else (v, None)
            if not is_image_batch(v):
                raise TypeError(f"visual '{name}' is a tensor of shape {tuple(v.shape)}: give images [N, C, H, W] "
                                f"with 1 or 3 channels, a figure or a str")
            if shown:
                writer.add_image(name, to_image_grid(v, nrow), step)
            if directory is not None:
                save_png(v, directory / f"{name}{suffix}.png", nrow)
        elif hasattr(v, "savefig"):
            if directory is not None:
                save_png(v, directory / f"{name}{suffix}.png")
            if shown:
                writer.add_figure(name, v, step)  # closes the figure
            else:
                import matplotlib.pyplot as plt

                plt.close(v)
        else:
            raise TypeError(f"visual '{name}' is a {type(v).__name__}: give an image tensor, a figure or a str")
