"""How large is an FID-LeNet? Distances of slightly perturbed real images to the test set, next to the floor.

    python scripts/fid_scale.py [--evaluator runs/lenet] [--out runs/fid_scale.json]

Each row is the FID-LeNet of the first 10k official training images, perturbed as named, against the 10k test
images, with the same evaluator that `zoo eval` uses; "none" is the real-vs-real floor of `zoo eval`.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from zoo import fid
from zoo.errors import out_file, script_main
from zoo.models.lenet import random_shift


def rotate(x: torch.Tensor, degrees: float, g: torch.Generator) -> torch.Tensor:
    th = (torch.rand(len(x), generator=g) * 2 - 1) * math.radians(degrees)
    a = torch.zeros(len(x), 2, 3)
    a[:, 0, 0], a[:, 0, 1], a[:, 1, 0], a[:, 1, 1] = th.cos(), -th.sin(), th.sin(), th.cos()
    return F.grid_sample(x, F.affine_grid(a, list(x.shape), align_corners=False), align_corners=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--evaluator", default=None, help="lenet run dir (default runs/lenet, trained if missing)")
    p.add_argument("--out", type=out_file, default="runs/fid_scale.json")
    args = p.parse_args()
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    lenet = fid.load_evaluator(None, args.evaluator)
    x_train, x_test = fid.real_mnist()
    f_test, _ = fid.classify(lenet, x_test)
    ref = fid.gaussian_stats(f_test)
    perturb = {
        "none (floor)": lambda x: x,
        "shift <= 1 px": lambda x: random_shift(x, 1),
        "rotate <= 10 deg": lambda x: rotate(x, 10, g),
        "gaussian noise 0.1": lambda x: (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1),
        "contrast x0.8": lambda x: 0.8 * x,
        "blur 3x3 mean": lambda x: F.avg_pool2d(x, 3, 1, 1),
        "thicker (2x2 max)": lambda x: F.pad(F.max_pool2d(x, 2, 1), (0, 1, 0, 1)),
    }
    rows = {}
    for name, fn in perturb.items():
        feats, probs = fid.classify(lenet, fn(x_train))
        rows[name] = {"fid_lenet": fid.frechet_distance(*fid.gaussian_stats(feats), *ref),
                      "mean_confidence": fid.class_stats(probs)["mean_confidence"]}
    floor = rows["none (floor)"]["fid_lenet"]
    for name, r in rows.items():
        r["ratio_to_floor"] = r["fid_lenet"] / floor
        print(f"{name:22s} FID-LeNet {r['fid_lenet']:8.2f}  x{r['ratio_to_floor']:6.1f} floor  "
              f"confidence {r['mean_confidence']:.4f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    script_main(main)
