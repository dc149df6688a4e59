"""What the weight average and the noise temperature do to a trained GAN's FID-LeNet.

    python scripts/gan_ema_check.py runs/gan [--evaluator runs/lenet] [--out runs/gan_ema_check.json]

Rows: the averaged generator (what `zoo sample` and `zoo eval` use) and the raw last iterate, each at noise
temperatures 1.0 (the reported number), 0.9 and 0.8 (truncation: fewer odd digits, less variety). All rows use
the same 10k latent codes, the same evaluator and the same test statistics, so their ratios are side by side.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from zoo import fid
from zoo.checkpoint import load_run
from zoo.errors import ZooError, out_file, script_main


class _Generator:
    """``sample`` of one of the run's generators, for fid.draw_samples."""

    def __init__(self, model, net):
        self.model, self.net = model, net

    @torch.no_grad()
    def sample(self, n, generator=None, temperature=1.0):
        return self.net(self.model.noise(n, generator) * temperature)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a gan run dir, or one of its checkpoints (.pt)")
    p.add_argument("--evaluator", default=None, help="lenet run dir (default runs/lenet, trained if missing)")
    p.add_argument("--out", type=out_file, default="runs/gan_ema_check.json")
    args = p.parse_args()
    model, cfg, _ = load_run(args.run, device="cpu")
    if getattr(model, "generator_ema", None) is None:
        raise ZooError(f"{args.run}: this run keeps no weight average (model.ema: 0); train one with model.ema > 0")
    model.eval()
    lenet = fid.load_evaluator(None, args.evaluator)
    x_train, x_test = fid.real_mnist()
    ref = fid.gaussian_stats(fid.classify(lenet, x_test)[0])
    floor = fid.frechet_distance(*fid.gaussian_stats(fid.classify(lenet, x_train)[0]), *ref)
    rows = {}
    for name, net in (("average", model.generator_ema), ("raw", model.generator)):
        for t in (1.0, 0.9, 0.8):
            x = fid.draw_samples(_Generator(model, net), fid.N_SAMPLES, seed=0, temperature=t)
            feats, probs = fid.classify(lenet, x)
            d = fid.frechet_distance(*fid.gaussian_stats(feats), *ref)
            stats = fid.class_stats(probs)
            rows[f"{name} G, temperature {t}"] = {
                "fid_lenet": d, "ratio_to_floor": d / floor, "min_class_share": stats["min_class_share"],
                "mean_confidence": stats["mean_confidence"]}
    print(f"{args.run}: FID-LeNet floor (real vs real) {floor:.2f}")
    for k, r in rows.items():
        print(f"  {k:28s} FID {r['fid_lenet']:7.2f}  {r['ratio_to_floor']:5.1f}x floor  "
              f"smallest class {r['min_class_share']:.1%}  confidence {r['mean_confidence']:.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"run": args.run, "floor": floor, "rows": rows}, indent=1))


if __name__ == "__main__":
    script_main(main)
