"""The 1-D GAN analytic checks over several seeds, through the trainer (what tests/test_gan.py asserts once).

    python scripts/gan1d_check.py [--seeds 0 1 2] [--out runs/gan1d_check.json]

For each seed: G trained from the identity (configs/gan1d.yaml) -> W1, max|G - G*| on [0, 0.99], KS, and
D trained alone against G = identity -> sup |D - D*|, with wall times. Also the same G run without R1. Each
figure also comes as it was before training (``*_start``): what training changed.
"""
from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch

from zoo.config import load_config
from zoo.errors import ConfigError, out_file, script_main
from zoo.runtime import check_seed
from zoo.trainer import Trainer

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "gan1d.yaml"  # from any working dir

RUNS = {
    "g_from_identity": [],
    "g_from_identity_no_r1": ["model.r1=0"],
    "d_alone_vs_identity": ["model.freeze_g_identity=true", "model.r1=0", "train.epochs=30", "train.optimizer.lr=3e-3"],
}
KEYS = ("w1", "l1_g_gstar", "max_abs_g_gstar_0_0.99", "ks", "g_monotone", "d_star_sup_error", "floor_w1_real_n",
        "floor_ks_real_n")


class Ctx:
    seed, options, config = 0, {}, {}
    device = torch.device("cpu")

    @staticmethod
    def log(msg):
        print(msg)


def seed_arg(text: str) -> int:
    """An argparse ``type``: a seed the config accepts."""
    try:
        check_seed("--seeds", value := int(text))
    except (ValueError, ConfigError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=seed_arg, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=out_file, default="runs/gan1d_check.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for name, overrides in RUNS.items():
                cfg = load_config(str(CONFIG), ["train.device=cpu", f"train.seed={seed}", *overrides])
                t0 = time.perf_counter()
                tr = Trainer(cfg, Path(tmp) / f"{name}-{seed}", quiet=True, log=lambda s: None)
                start = copy.deepcopy(tr.model)
                tr.fit()
                seconds = round(time.perf_counter() - t0, 1)
                out, before = tr.model.evaluate(tr.data, Ctx()), start.evaluate(tr.data, Ctx())
                row = {"run": name, "seed": seed, "seconds": seconds, **{k: out[k] for k in KEYS if k in out},
                       **{f"{k}_start": before[k] for k in KEYS if k in before and not k.startswith("floor")}}
                rows.append(row)
                print(json.dumps(row))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    script_main(main)
