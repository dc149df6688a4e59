"""FID-LeNet and the other sample-quality metrics of any MNIST model with ``sample(n, generator, temperature)``.

FID-LeNet is the Fréchet distance between Gaussians fitted to the penultimate-layer features of a LeNet trained
on MNIST (``lenet``): d^2 = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2}). Its scale depends on the evaluator,
so every call also measures the real-vs-real floor (10k training images vs the 10k test images) with the same
evaluator: a model is judged by fid / floor. The same classifier gives the mode coverage of the samples (class
histogram, KL to uniform, smallest class share) and their mean max-softmax confidence.

The evaluator comes from one recipe, configs/lenet.yaml (same weights for the same seed, torch version and
device). Every result names the evaluator's recipe and a hash of its weights; the default evaluator is refused
when it was trained otherwise, and one passed explicitly from another recipe is flagged.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ZooError

DEFAULT_EVALUATOR = "runs/lenet"
RECIPE = "configs/lenet.yaml"
RECIPE_KEYS = {"model": None, "data": ("name", "val_size", "limit"),  # what sets the weights (not paths, logs)
               "train": ("epochs", "batch_size", "optimizer", "scheduler", "seed", "precision", "grad_clip")}
# options added after evaluators were trained: at these values they leave an evaluator's recipe id as it was
LATER_DEFAULTS = {"train": {"optimizer": {"fused": False}}}
N_SAMPLES = 10_000
# CPU threads of the on-demand training, whatever OMP_NUM_THREADS says: the count changes the order of the sums in
# the kernels, so the weights (f268e79106566d17 for the recipe with 2 threads and torch 2.14, 0.05 apart after 100
# steps with 1 thread)
TRAIN_THREADS = 2
TRAIN_OVERRIDES: list[str] = []  # dotted overrides for the on-demand evaluator training (tests shrink it)


def _log(ctx, msg: str) -> None:
    log = getattr(ctx, "log", None)
    if callable(log):
        log(msg)
    else:
        print(msg, file=sys.stderr)


def gaussian_stats(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of [N, D] features, in float64."""
    f = features.detach().double().cpu().numpy()
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1, s1, mu2, s2) -> float:
    """|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^{1/2} S2 S1^{1/2})^{1/2}), via symmetric eigendecompositions.

    tr((S1 S2)^{1/2}) equals tr of the square root of the PSD matrix S1^{1/2} S2 S1^{1/2}, whose eigenvalues are
    real and >= 0: no complex parts to discard, unlike scipy.linalg.sqrtm(S1 @ S2).
    """
    mu1, mu2, s1, s2 = (np.asarray(a, dtype=np.float64) for a in (mu1, mu2, s1, s2))
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    cross = np.sqrt(np.clip(inner, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * cross)


# ----------------------------------------------------------------------------------------------------------------
def evaluator_dir(ctx=None, evaluator: str | Path | None = None) -> Path:
    """Where the LeNet run is: the argument, ``ctx.options["evaluator"]`` (zoo eval --evaluator), $ZOO_EVALUATOR,
    else runs/lenet."""
    options = getattr(ctx, "options", None) or {}
    return Path(evaluator or options.get("evaluator") or os.environ.get("ZOO_EVALUATOR") or DEFAULT_EVALUATOR)


def recipe_id(cfg: dict) -> str:
    """A short hash of what determines an evaluator's weights in a resolved lenet config."""
    keep = {}
    for section, keys in RECIPE_KEYS.items():
        part = cfg.get(section) or {}
        keep[section] = {k: v for k, v in part.items() if keys is None or k in keys}
        for key, later in LATER_DEFAULTS.get(section, {}).items():
            if isinstance(keep[section].get(key), dict):
                keep[section][key] = {k: v for k, v in keep[section][key].items()
                                      if not (k in later and v == later[k])}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:12]


def weights_sha256(model) -> str:
    """sha256 of a model's parameters and buffers (sorted by name, as float32/int64 bytes): which weights they are."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _recipe_path() -> Path:
    return Path(__file__).resolve().parents[1] / RECIPE


def load_evaluator(ctx=None, evaluator: str | Path | None = None, device=None, info: dict | None = None):
    """The trained ``lenet`` in eval mode; trained on demand from the recipe when the run does not exist.

    ``info`` (a dict) receives the evaluator's path, recipe and weight hash. The default evaluator must match the
    recipe (else FID figures would not compare); one named explicitly may differ and is then flagged.
    """
    from .checkpoint import load_run
    from .config import load_config

    run = evaluator_dir(ctx, evaluator)
    options = getattr(ctx, "options", None) or {}
    # named by the user (even as runs/lenet, which the refusal below tells them to do): used, but flagged
    explicit = bool(evaluator or options.get("evaluator") or os.environ.get("ZOO_EVALUATOR"))
    device = device or getattr(ctx, "device", None) or "cpu"
    if not (run / "checkpoints" / "last.pt").is_file() and not run.is_file():
        if explicit:  # a typo must not start a training run at the typo's path
            raise ZooError(f"the FID evaluator '{run}' is neither a trained run dir nor a checkpoint file; give a "
                           f"lenet run (zoo train {RECIPE} --run-dir {run}), or leave --evaluator out to use "
                           f"{DEFAULT_EVALUATOR}, trained on demand")
        _train_evaluator(run, ctx)
    model, cfg, ckpt = load_run(run, device=device)
    if ckpt["model_name"] != "lenet":
        raise ZooError(f"the FID evaluator '{run}' is a '{ckpt['model_name']}' run; it must be a `lenet` run "
                       f"(zoo train configs/lenet.yaml)")
    metrics = run / "metrics.json"
    finished = not metrics.is_file() or json.loads(metrics.read_text()).get("status") == "finished"
    if not finished and not explicit:  # half-trained weights: its FID-LeNet would not compare either
        raise ZooError(f"the FID evaluator '{run}' did not finish training; resume it (zoo train "
                       f"{run / 'config.yaml'} --resume {run}) or move it away to train a new one")
    if not finished:
        _log(ctx, f"warning: the FID evaluator '{run}' did not finish training; FID-LeNet uses it as it is")
    want = recipe_id(load_config(_recipe_path())) if _recipe_path().is_file() else None
    have = recipe_id(cfg)
    if want is not None and have != want:
        if not explicit:
            raise ZooError(f"the FID evaluator '{run}' was not trained with the recipe {RECIPE} (recipe {have}, "
                           f"expected {want}), so its FID-LeNet would not compare: move it away (a recipe one is "
                           f"trained on demand) or name it with --evaluator to use it anyway (flagged)")
        _log(ctx, f"warning: the FID evaluator '{run}' is not from the recipe {RECIPE}: its FID-LeNet figures do "
                  f"not compare with published ones")
    if info is not None:
        info.update({"evaluator": str(run), "evaluator_recipe": have, "evaluator_matches_recipe": have == want,
                     "evaluator_finished": finished,
                     "evaluator_sha256": weights_sha256(model)[:16]})
    return model.eval()


def _train_evaluator(run: Path, ctx) -> None:
    from .config import load_config
    from .trainer import fit

    rel, path = RECIPE, _recipe_path()
    if not path.is_file():
        raise ZooError(f"no FID evaluator at '{run}' and {rel} is not found to train one; "
                       f"run `zoo train {rel} --run-dir {run}` from the repository, or pass the evaluator's run dir")
    _log(ctx, f"FID evaluator: no trained lenet at '{run}'; training one now with {rel} (a few minutes on a CPU, "
              f"done once; later evaluations reuse it)")
    cfg = load_config(path, TRAIN_OVERRIDES)
    threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    try:
        trainer = fit(cfg, run, quiet=True)
    finally:
        torch.set_num_threads(threads)
    if trainer.metrics["status"] == "interrupted":  # Ctrl-C or SIGTERM: stop here, as the command was asked to
        _log(ctx, f"FID evaluator training stopped; resume it with zoo train {run / 'config.yaml'} --resume {run}")
        raise KeyboardInterrupt
    last = trainer.metrics["epochs"][-1] if trainer.metrics.get("epochs") else {}
    _log(ctx, f"FID evaluator trained into '{run}' (val/acc={last.get('val/acc', float('nan')):.4f})")


@torch.no_grad()
def classify(lenet, images: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features [N, D] and softmax probabilities [N, 10] of images in [0, 1]."""
    feats, probs = [], []
    device = lenet.device
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device).float()
        f = lenet.features(x)
        feats.append(f.cpu())
        probs.append(torch.softmax(lenet.head(f), 1).cpu())
    return torch.cat(feats), torch.cat(probs)


@torch.no_grad()
def draw_samples(model, n: int, seed: int, batch_size: int = 1000, temperature: float = 1.0, **kw) -> torch.Tensor:
    """n samples from ``model.sample`` in chunks (memory), from one seeded generator (reproducible); ``kw`` goes
    to ``sample`` (e.g. prior=)."""
    gen = torch.Generator().manual_seed(seed)
    chunks = [model.sample(min(batch_size, n - i), generator=gen, temperature=temperature, **kw).cpu()
              for i in range(0, n, batch_size)]
    x = torch.cat(chunks)
    if x.shape[1:] != (1, 28, 28):
        raise ZooError(f"FID-LeNet needs MNIST-shaped samples [N, 1, 28, 28], the model gives {list(x.shape[1:])}")
    return x.clamp(0, 1)


def class_stats(probs: torch.Tensor, prefix: str = "") -> dict[str, Any]:
    """Histogram of predicted classes, KL(histogram || uniform) in nats, smallest share, mean confidence."""
    k = probs.shape[1]
    share = torch.bincount(probs.argmax(1), minlength=k).double() / len(probs)
    nz = share[share > 0]
    kl = float((nz * torch.log(nz * k)).sum())
    return {f"{prefix}class_shares": [round(float(s), 4) for s in share],
            f"{prefix}kl_to_uniform": kl,
            f"{prefix}min_class_share": float(share.min()),
            f"{prefix}mean_confidence": float(probs.max(1).values.mean())}


def applies(data) -> bool:
    """FID-LeNet compares with real MNIST digits, so it applies to data of MNIST's shape [1, 28, 28]."""
    return tuple(data.info.get("input_shape", ())) == (1, 28, 28)


def real_mnist(data=None, root: str | None = None):
    """(first 10k official training images, 10k test images) in [0, 1], whatever the run's data transform."""
    from .data import create_data

    mnist = create_data("mnist", root=root, val_size=0)
    x_train, _ = mnist.full_train()
    x_test, _ = mnist.tensors("test")
    return x_train[:N_SAMPLES], x_test


def generative_metrics(model, data=None, ctx=None, evaluator: str | Path | None = None,
                       n: int = N_SAMPLES, **sample_kw) -> dict[str, Any]:
    """FID-LeNet of n samples vs the test set, the real-vs-real floor, and mode coverage, for ``zoo eval``;
    ``sample_kw`` goes to the model's ``sample`` (prior=...)."""
    if not hasattr(model, "sample"):
        raise ZooError(f"{type(model).__name__} has no sample(): generative metrics need a generative model")
    seed = int(getattr(ctx, "seed", 0) or 0)
    about: dict[str, Any] = {}
    lenet = load_evaluator(ctx, evaluator, device=model.device, info=about)
    root = (getattr(ctx, "config", None) or {}).get("data", {}).get("root")
    x_train, x_test = real_mnist(data, root)
    _log(ctx, f"FID-LeNet: drawing {n} samples and embedding them with the evaluator '{evaluator_dir(ctx, evaluator)}'")
    was = model.training
    model.eval()
    fake = draw_samples(model, n, seed, **sample_kw)
    model.train(was)
    f_fake, p_fake = classify(lenet, fake)
    f_test, p_test = classify(lenet, x_test)
    f_train, _ = classify(lenet, x_train[:n])
    test_stats = gaussian_stats(f_test)
    fid = frechet_distance(*gaussian_stats(f_fake), *test_stats)
    floor = frechet_distance(*gaussian_stats(f_train), *test_stats)
    out = {"fid_lenet": fid, "fid_lenet_floor_real_vs_real": floor,
           "fid_lenet_ratio_to_floor": fid / floor if floor > 0 else math.inf,
           "n_samples": n, **sample_kw, **about, **class_stats(p_fake)}
    real = class_stats(p_test, "test_")  # the same numbers for real test images: what "good" looks like
    out.update({k: v for k, v in real.items() if k != "test_class_shares"})
    return out
