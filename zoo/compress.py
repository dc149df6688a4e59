"""Colour quantisation with k-means (HW3 Q2 d-e): cluster an image's RGB pixels, repaint each with its centre.

A pixel then needs log2(k) bits (its cluster id) instead of 24, so the image shrinks by 24 / log2(k) (ignoring
the k x 24-bit palette). ``method="net"`` trains the k-means network of ``zoo.models.kmeans`` by mini-batch SGD
on the pixels; ``method="lloyd"`` runs Lloyd's algorithm. Both start from k-means++ seeds.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from .clustering import assign, kmeans_plus_plus, lloyd, one_thread
from .errors import ZooError

METHODS = ("net", "lloyd")


#: Largest image zoo compress reads (16.7 megapixels): past it, PIL's decompression-bomb guard or the pixel
#: table itself would exhaust memory, so the image is refused with one line instead.
MAX_PIXELS = 4096 * 4096


def load_rgb(path: str | Path) -> torch.Tensor:
    """[H, W, 3] uint8 tensor of an image file (any mode PIL reads, converted to RGB)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ZooError(f"image '{path}' " + ("does not exist" if not path.exists() else "is not a file"))
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise ZooError(f"'{path}' is {im.width} x {im.height} pixels, over zoo compress's limit of "
                               f"{MAX_PIXELS:,}; downscale it first")
            return torch.frombuffer(bytearray(_to_8bit(im).convert("RGB").tobytes()), dtype=torch.uint8).reshape(
                im.height, im.width, 3)
    except Image.DecompressionBombError:
        raise ZooError(f"'{path}' declares more pixels than PIL will decode (a decompression bomb?); "
                       f"zoo compress reads images of at most {MAX_PIXELS:,} pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:  # PIL raises these for broken files
        raise ZooError(f"'{path}' is not an image PIL can read ({type(e).__name__}); give a PNG or JPEG") from None


def _to_8bit(im):
    """PIL's convert("RGB") clips 16-bit and 32-bit grey to 255 (a 16-bit PNG comes out almost white): scale
    them instead. 16-bit and integer images by 65535 -> 255, float images from [0, 1] (or from [0, 255])."""
    from PIL import Image
    import numpy as np

    if not (im.mode.startswith("I") or im.mode == "F"):
        return im
    a = np.asarray(im, dtype=np.float64)
    if im.mode == "F":
        a = a * 255 if a.size and np.nanmax(a) <= 1 else a
    else:
        a = a / 257
    return Image.fromarray(np.nan_to_num(a).clip(0, 255).round().astype(np.uint8), "L")


def save_rgb(pixels: torch.Tensor, path: str | Path) -> None:
    from PIL import Image

    from .visuals import replacing

    with replacing(path) as tmp:
        Image.fromarray(pixels.cpu().numpy(), "RGB").save(tmp)


def fit_net(x: torch.Tensor, k: int, generator: torch.Generator, epochs: int = 3, batch_size: int = 1024,
            lr: float = 0.5, beta: float = 1e4) -> torch.Tensor:
    """Centres learned by the k-means network with SGD, the step size decayed linearly to 0.

    Pixel colours are close together (squared distances < 3), so beta must be far above MNIST's 20 for the
    softmax to pick one centre. lr 0.5 keeps every step stable: centre i moves by a fraction
    2 lr |V_i| / B <= 1 of the way to its cell's batch mean, even when one colour fills the whole batch.
    """
    from .registry import create_model

    net = create_model("kmeans_net", input_shape=(3,), k=k, beta=beta, assign_grad=False)
    with torch.no_grad():
        net.centers.copy_(kmeans_plus_plus(x[torch.randperm(len(x), generator=generator)[:20000]], k, generator))
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    steps = epochs * math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 - t / steps)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=generator).split(batch_size):
            loss = net.training_step((x[idx], None))["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return net.centers.detach()


def compress(pixels: torch.Tensor, k: int, method: str = "net", seed: int = 0) -> dict:
    """Quantise [H, W, 3] uint8 ``pixels`` to k colours: the new image, its palette, factor and errors."""
    if not 2 <= k <= 4096:
        raise ZooError(f"-k {k}: choose 2 to 4096 colours")
    if method not in METHODS:
        raise ZooError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    t0 = time.perf_counter()
    x = pixels.reshape(-1, 3).float() / 255
    g = torch.Generator().manual_seed(seed)
    with one_thread():  # [B, 3] x [3, k] products are too small to split between threads
        if method == "net":
            centers = fit_net(x, k, g)
        else:
            centers = lloyd(x, kmeans_plus_plus(x[torch.randperm(len(x), generator=g)[:20000]], k, g), 300).centers
    palette = (centers.clamp(0, 1) * 255).round().to(torch.uint8)
    out = palette[assign(x, centers)].reshape(pixels.shape)
    err = (out.float() - pixels.float()) / 255  # what the written 8-bit image actually differs by
    mse = err.pow(2).mean().item()
    return {"image": out, "palette": palette, "k": k, "method": method,
            "compression_factor": 24 / math.log2(k), "mse": mse,
            "psnr_db": 10 * math.log10(1 / mse) if mse > 0 else math.inf,
            "colours_used": int(torch.unique(out.reshape(-1, 3), dim=0).shape[0]),
            "seconds": time.perf_counter() - t0}


PNG_ONLY = "JPEG would blur the k colours"


def compress_file(image: str | Path, k: int, out: str | Path, method: str = "net", seed: int = 0) -> dict:
    """``zoo compress``: read ``image``, quantise, write ``out`` (PNG keeps the colours exact)."""
    if Path(out).suffix.lower() != ".png":
        raise ZooError(f"-o {out}: write a .png file ({PNG_ONLY})")
    result = compress(load_rgb(image), k, method, seed)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_rgb(result["image"], out)
    return result
