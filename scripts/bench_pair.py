"""zoo's trainer against the minimal loop, paired: minimal, zoo, minimal, repeated in one process; each round's
ratio is zoo's items/s over the mean of the two minimal runs around it, so a slow spell of the machine hits
both sides of a ratio. Finer than `scripts/bench.py` for the light configs whose windows scatter.

    .venv/bin/python scripts/bench_pair.py configs/purifier.yaml --steps 1000 --rounds 10
    .venv/bin/python scripts/bench_pair.py configs/purifier.yaml --no-window   # zoo keeping no step terms
    .venv/bin/python scripts/bench_pair.py configs/purifier.yaml --minimal-clears-grads
    .venv/bin/python scripts/bench_pair.py configs/translit.yaml --minimal-torch-update --steps 20 --rounds 5
    .venv/bin/python scripts/bench_pair.py configs/translit.yaml --against train.optimizer.fused=true

One intra-op thread (the light configs' steps are too small to split). ``--no-window`` drops each step's terms
instead of keeping them for the logged means and the NaN check (nothing is logged): what that keeping costs.
``--minimal-clears-grads`` has the minimal loop set ``.grad = None`` itself, as zoo does, instead of calling
``zero_grad(set_to_none=True)`` (the same effect behind a profiler range): zoo against that stricter limit.
``--minimal-torch-update`` has the minimal loop build its optimizer with torch's defaults, as pytorch/examples do
(on a CPU a Python loop over the parameters, where zoo's update and clipping run foreach kernels): what that saves.
``--against KEY=VALUE ...`` pairs zoo with those overrides against zoo without them (an option's speed-up).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import MinimalLoop, ZooLoop  # noqa: E402

from zoo.config import load_config  # noqa: E402
from zoo.errors import positive, script_main  # noqa: E402
from zoo.optim import build_optimizers, clear_grads  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--steps", type=positive(int), default=1000, help="steps per timed run")
    ap.add_argument("--rounds", type=positive(int), default=10)
    ap.add_argument("--no-window", action="store_true")
    ap.add_argument("--minimal-clears-grads", action="store_true")
    ap.add_argument("--minimal-torch-update", action="store_true")
    ap.add_argument("--against", nargs="+", metavar="KEY=VALUE", help="zoo with these overrides against zoo")
    a = ap.parse_args()
    if a.steps < 1 or a.rounds < 1:
        ap.error("--steps and --rounds must be at least 1")
    if a.against and (a.no_window or a.minimal_clears_grads or a.minimal_torch_update):
        ap.error("--against pairs zoo with zoo: --no-window and the --minimal-... options do not apply")
    torch.set_num_threads(1)
    cfg = load_config(a.config, ["train.device=cpu"])
    with tempfile.TemporaryDirectory() as tmp:
        if a.against:  # the variant takes zoo's place, plain zoo the minimal loop's
            zoo = ZooLoop(load_config(a.config, ["train.device=cpu", *a.against]), Path(tmp) / "variant")
            minimal = ZooLoop(cfg, Path(tmp) / "run")
        else:
            zoo, minimal = ZooLoop(cfg, Path(tmp) / "run"), MinimalLoop(cfg, torch.device("cpu"))
        if a.no_window:
            zoo.tr.window.add = lambda step, terms: None
        if a.minimal_torch_update:
            minimal.foreach = None  # its clipping too
            minimal.optimizers, minimal.schedulers = build_optimizers(minimal.model, cfg["train"], foreach=None)
        if a.minimal_clears_grads:
            for opt in minimal.optimizers.values():
                opt.zero_grad = lambda set_to_none=True, opt=opt: clear_grads(opt)
        zoo.run(a.steps), minimal.run(a.steps)  # warm-up

        def timed(loop) -> float:
            t = time.perf_counter()
            loop.run(a.steps)
            return time.perf_counter() - t

        ratios = []
        for _ in range(a.rounds):
            before, z, after = timed(minimal), timed(zoo), timed(minimal)
            ratios.append((before + after) / 2 / z)
        for loop in (zoo, minimal):
            if isinstance(loop, ZooLoop):
                loop.tr.runlog.close()
    note = (" (no step window)" if a.no_window else "") + (" (minimal clears grads)" if a.minimal_clears_grads else "") \
        + (" (minimal: torch's default update)" if a.minimal_torch_update else "")
    what = f"zoo {' '.join(a.against)}/zoo" if a.against else "zoo/minimal"
    print(f"{a.config}{note}: {what} per round "
          f"{[round(r, 3) for r in ratios]}, median {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    script_main(main)
