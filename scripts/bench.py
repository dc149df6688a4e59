"""Training speed, side by side: zoo's trainer against a minimal hand-written loop and the pytorch/examples way.

For each config, three loops train the same model (same batch size, optimizer, precision and device) from the
same config, interleaved in one process so machine noise hits all three alike:

  zoo         the real Trainer loop (logging, NaN checks, stop requests, data order, augmentation)
  minimal     a hand-written loop over the same in-memory tensors: index, collate, step, the learning-rate
              schedule each epoch and the loss read every log_every steps (pytorch/examples' log_interval);
              the optimizer's multi-tensor (foreach) update, as zoo's: the eager limit
  dataloader  the pytorch/examples way: torchvision.datasets.MNIST + ToTensor + DataLoader for MNIST configs,
              a Dataset + DataLoader over the same tensors otherwise (num_workers 0 on CPU, 1 + pinned on CUDA);
              the optimizer as torch builds it by default (a loop over the parameters on a CPU, foreach on CUDA)

All three draw the trainer's permutation of each epoch (for torchvision's MNIST, over its first N images, N
the size of the training split), so every window trains on the same batches: a translit step costs 180-260 ms
by its words' lengths. Steady state: items/s over interleaved windows after a warm-up; each ratio is the median
over rounds of the ratio of the loops' windows in that round. Every loop runs the model's own epoch
hook (the EM M-step, say); validation, visuals and checkpoints are left out of all three and timed in the
whole-run view instead: a short `zoo train` in a fresh process (S steps, one epoch end), split into start-up,
data, steps, batching and loop, the model's epoch hook, validation, logging and checkpoints.

    .venv/bin/python scripts/bench.py                          # every shipped config on CPU, about 20 minutes
    .venv/bin/python scripts/bench.py configs/vae.yaml --device cuda --set train.precision=bf16
    .venv/bin/python scripts/bench.py --kmeans                 # kmeans_net vs scikit-learn KMeans(n_init=10)

Prints a table and writes JSON (--out): by default bench/results.json for every shipped config on CPU with no
--set, bench/kmeans.json for --kmeans (the committed figures the README quotes), and runs/bench/TIME.json for
anything else, so measuring one config never overwrites the committed table.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from zoo.config import load_config  # noqa: E402
from zoo.data import create_data  # noqa: E402
from zoo.errors import out_file, positive, script_main  # noqa: E402
from zoo.optim import build_optimizers  # noqa: E402
from zoo.registry import create_model  # noqa: E402
from zoo.runtime import autocast, pick_device, prepare_model, seed_everything  # noqa: E402
from zoo.trainer import Trainer  # noqa: E402

#: Dense peak FLOP/s by device name fragment and precision (vendor data sheets, SXM parts, no sparsity).
PEAK = {"H200": {"fp32": 67e12, "bf16": 989e12, "fp16": 989e12},
        "H100": {"fp32": 67e12, "bf16": 989e12, "fp16": 989e12},
        "A100": {"fp32": 19.5e12, "bf16": 312e12, "fp16": 312e12}}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def epoch_hooks(model, schedulers: dict, epoch: int) -> None:
    """What every loop does at an epoch's end: the model's hook (an EM step, a prior refit), then the schedules."""
    model.on_epoch_end(epoch)
    for s in schedulers.values():
        s.step()


# ---- the three loops ----------------------------------------------------------------------------------------------
class MinimalLoop:
    """What a user writes by hand: a permutation per epoch, index the resident tensors, one step per optimizer."""

    name = "minimal"
    foreach: bool | None = True  # the eager limit: the multi-tensor update zoo's trainer runs (same numbers)

    def __init__(self, cfg: dict, device: torch.device):
        t = cfg["train"]
        seed_everything(t["seed"])
        self.cfg, self.device, self.bs, self.precision = cfg, device, t["batch_size"], t["precision"]
        self.data = create_data(**cfg["data"]).to(device)
        margs = {k: v for k, v in cfg["model"].items() if k != "name"}
        self.model = prepare_model(create_model(cfg["model"]["name"], self.data.info, **margs).to(device), t, device)
        self.model.setup(self.data)
        self.model.on_fit_start(self.data)
        self.model.train()
        self.optimizers, self.schedulers = build_optimizers(self.model, t, foreach=self.foreach)
        self.log_every, self.shown = t["log_every"], 0.0
        self.schedule = self.model.update_schedule()
        self.clip = t["grad_clip"]
        self.seed, self.gen = t["seed"], torch.Generator().manual_seed(t["seed"] + 1)
        self.step, self.rows = 0, self.batches()

    def batches(self):
        parts, n, epoch = self.data.tensors("train"), self.data.size("train"), 0
        while True:
            perm = self.data.epoch_order(self.seed, epoch, self.bs).to(self.device)  # the trainer's order
            for start in range(0, n, self.bs):
                idx = perm[start:start + self.bs]
                yield tuple(p[idx] for p in parts)
            self.end_epoch(epoch)
            epoch += 1

    def end_epoch(self, epoch: int) -> None:
        epoch_hooks(self.model, self.schedulers, epoch)

    def make_batch(self, parts):
        batch = self.data.augment(self.data.collate("train", parts, self.gen), self.gen)
        if self.data.input_noise:
            x = batch[0]
            batch = type(batch)((x + torch.randn(x.shape, generator=self.gen).to(x) * self.data.input_noise,
                                 *batch[1:]), batch.num_items)
        return batch

    def one_step(self, batch) -> None:
        model = self.model
        for name in self.schedule:
            if model.manual_update:
                with torch.no_grad():
                    loss = model.training_step(batch, optimizer=name)["loss"]
                continue
            with autocast(self.device, self.precision):
                loss = model.training_step(batch, optimizer=name)["loss"]
            opt = self.optimizers[name]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.clip:
                torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], self.clip,
                                               foreach=self.foreach)
            opt.step()
        self.step += 1
        model.on_train_batch_end(self.step)
        if self.log_every and self.step % self.log_every == 0:
            self.shown = loss.item()  # what a hand-written loop prints

    def run(self, k: int) -> int:
        """``k`` steps; returns the number of items (rows) trained on."""
        items = 0
        for _ in range(k):
            batch = self.make_batch(next(self.rows))
            items += len(batch[0])
            self.one_step(batch)
        return items


class EpochOrder(torch.utils.data.Sampler):
    """``shuffle=True``'s RandomSampler (a randperm per epoch, as a list) drawing the trainer's permutations
    (bucketed as the trainer's are, with ``data.bucket``)."""

    def __init__(self, data, seed: int, batch_size: int):
        self.data, self.seed, self.bs, self.epoch = data, seed, batch_size, 0

    def __len__(self) -> int:
        return self.data.size("train")

    def __iter__(self):
        order = self.data.epoch_order(self.seed, self.epoch, self.bs).tolist()
        self.epoch += 1
        yield from order


class DataLoaderLoop(MinimalLoop):
    """The pytorch/examples way: a Dataset read item by item, batched by a DataLoader, moved to the device."""

    name = "dataloader"
    foreach = None  # torch's default update, as pytorch/examples build it: a Python loop on a CPU

    def __init__(self, cfg: dict, device: torch.device):
        super().__init__(cfg, device)
        from torch.utils.data import DataLoader, TensorDataset

        d = cfg["data"]
        if d["name"] == "mnist":
            from torchvision import datasets, transforms

            to_float = self.data.to_float  # ToTensor's [0, 1] floats, binarised or dequantised as the config says
            tf = transforms.Compose([transforms.PILToTensor(), transforms.Lambda(lambda x: to_float(x)[0])])
            dataset = datasets.MNIST(self.data.root, train=True, transform=tf)
        else:
            dataset = TensorDataset(*(p.cpu() for p in self.data.tensors("train")))
        cuda = device.type == "cuda"
        self.loader = DataLoader(dataset, batch_size=self.bs, sampler=EpochOrder(self.data, self.seed, self.bs),
                                 num_workers=1 if cuda else 0, pin_memory=cuda, persistent_workers=cuda)

    def batches(self):
        epoch = 0
        while True:
            for parts in self.loader:
                yield tuple(p.to(self.device, non_blocking=True) for p in parts)
            self.end_epoch(epoch)
            epoch += 1


class ZooLoop:
    """The real Trainer loop, run ``k`` steps at a time through ``train.max_steps``. Its epoch-end work
    (validation, the NaN check that guards the epoch's logs and checkpoint, visuals, checkpoints) is replaced
    by what the other loops do there: the model's epoch hook and the schedules."""

    name = "zoo"

    def __init__(self, cfg: dict, run_dir: Path):
        from zoo.runtime import StopRequests

        cfg = copy.deepcopy(cfg)
        cfg["train"]["epochs"] = 10**9
        self.tr = tr = Trainer(cfg, run_dir, quiet=True, log=lambda s: None)
        tr.runlog.open(0, {})
        tr.model.train()
        self.stop, self.bs, self.n = StopRequests(), cfg["train"]["batch_size"], tr.data.size("train")

        def epoch_end():
            epoch_hooks(tr.model, tr.schedulers, tr.epoch)
            tr.epoch, tr.batch_in_epoch = tr.epoch + 1, 0

        tr.end_epoch = epoch_end

    def run(self, k: int) -> int:
        tr = self.tr
        nb = -(-self.n // self.bs)
        items = sum(min(self.bs, self.n - ((tr.batch_in_epoch + i) % nb) * self.bs) for i in range(k))
        tr.cfg["train"]["max_steps"] = tr.step + k
        tr._loop(self.stop)
        return items

    def close(self) -> None:
        self.tr.runlog.close()


# ---- measurements -------------------------------------------------------------------------------------------------
def flops_per_item(loop: MinimalLoop) -> float | None:
    """Forward + backward FLOPs of one training step per item (torch.utils.flop_counter; matmuls and convs)."""
    from torch.utils.flop_counter import FlopCounterMode

    batch = loop.make_batch(next(loop.rows))
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            loop.one_step(batch)
    except RuntimeError:  # the counter's hooks refuse double backward (the GAN's R1 penalty): not counted
        return None
    total = counter.get_total_flops()
    return total / len(batch[0]) if total else None


def steady_state(cfg: dict, device: torch.device, rounds: int, window: float, run_dir: Path) -> dict:
    loops = [ZooLoop(cfg, run_dir), MinimalLoop(cfg, device), DataLoaderLoop(cfg, device)]
    flops = flops_per_item(loops[1])
    for loop in loops:  # warm-up: allocator, caches, lazy inits, the first DataLoader iterator
        loop.run(3)
    steps, t0 = 0, time.perf_counter()  # calibrate: steps per window from the minimal loop
    while time.perf_counter() - t0 < min(window, 0.2) or steps < 2:
        loops[1].run(1)
        sync(device)
        steps += 1
    per_step = (time.perf_counter() - t0) / steps
    k = max(3, min(5000, math.ceil(window / per_step)))
    for loop in (loops[0], loops[2]):  # the same position in their epochs: every window holds the same epoch
        loop.run(steps)                # ends (k-means' hook reads all 60k images) for all three loops
    for loop in loops:
        loop.run(k)
    sync(device)
    items = {lp.name: 0 for lp in loops}
    seconds = {lp.name: 0.0 for lp in loops}
    ratios = {"minimal": [], "dataloader": []}
    for r in range(rounds):
        this = {}
        for lp in loops[r % 3:] + loops[:r % 3]:  # rotate who goes first
            sync(device)
            t0 = time.perf_counter()
            n = lp.run(k)
            sync(device)
            dt = time.perf_counter() - t0
            items[lp.name] += n
            seconds[lp.name] += dt
            this[lp.name] = n / dt
        for other, r_other in ratios.items():
            r_other.append(this["zoo"] / this[other])
    loops[0].close()
    thr = {name: items[name] / seconds[name] for name in items}
    # A round's three windows lie close in time and hold the same epoch ends: the median of the rounds' ratios
    # is what a slow spell of the machine during one window cannot move
    out = {"steps_per_window": k, "items_per_s": thr, "ratio_vs_minimal": statistics.median(ratios["minimal"]),
           "ratio_vs_dataloader": statistics.median(ratios["dataloader"]),
           "ratio_vs_minimal_per_round": ratios["minimal"], "ratio_vs_dataloader_per_round": ratios["dataloader"],
           "flops_per_item": flops}
    peak = next((v for key, v in PEAK.items() if device.type == "cuda" and key in torch.cuda.get_device_name(device)),
                None)
    if peak and flops:
        out["peak_fraction"] = flops * thr["zoo"] / peak[cfg["train"]["precision"]]
    out["seconds_per_step"] = seconds["zoo"] / (rounds * k)
    return out


def whole_run(config: str, overrides: list[str], steps: int) -> dict:
    """A short `zoo train` in a fresh process, from launch to its last checkpoint, split by phase."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "phases.json"
        launch = time.time()
        cmd = [sys.executable, __file__, "--profile-run", config, "--steps", str(steps), "--phases", str(out),
               "--run-dir", str(Path(tmp) / "run"), "--set", *overrides]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"the whole-run child failed on {config}:\n{proc.stderr[-2000:]}")
        phases = json.loads(out.read_text())
    phases["start-up"] += phases.pop("init_start") - launch
    phases["total"] = phases.pop("end") - launch
    phases["batching and loop"] = phases["total"] - sum(v for k, v in phases.items() if k != "total")
    return phases


def profile_run(config: str, overrides: list[str], steps: int, phases_path: Path, run_dir: Path) -> None:
    """The child of ``whole_run``: `zoo train CONFIG train.max_steps=S` with each phase timed (nested calls are
    counted once, by the innermost phase), and one epoch end after the S steps."""
    from zoo import cli
    from zoo.runlog import RunLog

    totals = {"start-up": 0.0, "data": 0.0, "steps": 0.0, "epoch hook": 0.0, "validation": 0.0, "logging": 0.0,
              "checkpoints": 0.0}
    stack: list[float] = []

    def timed(phase, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            stack.append(0.0)
            try:
                return fn(*args, **kwargs)
            finally:
                dt, inner = time.perf_counter() - t0, stack.pop()
                totals[phase] += dt - inner
                if stack:
                    stack[-1] += dt
        return wrapper

    real_init, real_loop = Trainer.__init__, Trainer._loop

    def init(self, *args, **kwargs):
        totals["init_start"] = time.time()
        timed("start-up", real_init)(self, *args, **kwargs)
        self.model.on_epoch_end = timed("epoch hook", self.model.on_epoch_end)  # an EM step, a prior refit

    def loop(self, stop):
        status = real_loop(self, stop)
        if status == "stopped" and self.batch_in_epoch:
            self.end_epoch()  # the epoch end a real run reaches: validation, visuals, checkpoint
        return status

    Trainer.__init__, Trainer._loop = init, loop
    Trainer._load_data = timed("data", Trainer._load_data)
    Trainer.train_step = timed("steps", Trainer.train_step)
    Trainer.validate = timed("validation", Trainer.validate)
    Trainer.save = timed("checkpoints", Trainer.save)
    for name in ("log_visuals", "finish"):
        setattr(Trainer, name, timed("logging", getattr(Trainer, name)))
    for name in ("open", "flush", "scalars", "train_scalars", "epoch_row", "visuals", "metrics", "hparams", "close"):
        setattr(RunLog, name, timed("logging", getattr(RunLog, name)))
    code = cli.main(["train", config, *overrides, f"train.max_steps={steps}", "--run-dir", str(run_dir), "--quiet"])
    totals["end"] = time.time()
    if code:
        raise SystemExit(code)
    phases_path.write_text(json.dumps(totals))


def kmeans_race(device: torch.device, out_dir: Path) -> dict:
    """Wall time for kmeans_net (configs/kmeans_lloyd.yaml through the trainer) to reach an inertia within 0.1% of
    scikit-learn's KMeans(n_clusters=10, n_init=10), and scikit-learn's own time, on the same 60k images."""
    from zoo.clustering import inertia, sklearn_kmeans

    cfg = load_config(str(ROOT / "configs" / "kmeans_lloyd.yaml"), [f"train.device={device.type}"])
    data = create_data(**cfg["data"]).setup()
    x, y = data.full_train()
    x = x.flatten(1)
    ref = sklearn_kmeans(x, y, cfg["model"]["k"], n_init=10, seed=0)
    goal = ref["inertia"] * 1.001
    reached: dict = {}
    t0 = time.perf_counter()
    tr = Trainer(cfg, out_dir / "kmeans", quiet=True, log=lambda s: None)
    real_end = tr.end_epoch

    def end_epoch():  # the trainer's own epoch end, which measures the cost on all 60k images, plus the clock
        real_end()
        got = tr.runlog.epochs[-1]["train/inertia_per_image_full"] * len(x)
        if got <= goal and not reached:
            reached.update(seconds=time.perf_counter() - t0, epoch=tr.epoch, inertia=got)

    tr.end_epoch = end_epoch
    tr.fit()
    total = time.perf_counter() - t0
    final = inertia(x.to(tr.device), tr.model.prototypes())
    return {"sklearn": {"inertia": ref["inertia"], "seconds": ref["seconds"], "iterations": ref["iterations"]},
            "goal_inertia": goal, "kmeans_net": {"reached": reached or None, "final_inertia": final,
                                                 "gap_vs_sklearn": final / ref["inertia"] - 1, "seconds": total},
            "ratio_sklearn_over_net": (ref["seconds"] / reached["seconds"]) if reached else None}


def default_out(args: argparse.Namespace) -> Path:
    """Where results go without --out: the committed files only for the runs that made them."""
    if args.kmeans:
        return ROOT / "bench" / "kmeans.json"
    if not args.configs and not args.set and args.device == "cpu":
        return ROOT / "bench" / "results.json"
    return ROOT / "runs" / "bench" / time.strftime("%Y%m%d-%H%M%S.json")


# ---- driver -------------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="*", help="configs to measure (default: every configs/*.yaml)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every config")
    ap.add_argument("--rounds", type=positive(int), default=15, help="interleaved timing windows per loop")
    ap.add_argument("--window", type=positive(float), default=0.4, help="seconds per window (about)")
    ap.add_argument("--steps", type=positive(int), default=200, help="at most this many steps in the whole-run view")
    ap.add_argument("--run-seconds", type=positive(float), default=4.0, help="about this many seconds of steps in it")
    ap.add_argument("--no-whole-run", action="store_true")
    ap.add_argument("--kmeans", action="store_true", help="only the kmeans_net vs scikit-learn race")
    ap.add_argument("--out", type=out_file, help="JSON file to write (default: bench/results.json for every config on "
                    "CPU without --set, bench/kmeans.json for --kmeans, else runs/bench/TIME.json)")
    ap.add_argument("--profile-run", help=argparse.SUPPRESS)
    ap.add_argument("--phases", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.profile_run:
        return profile_run(args.profile_run, args.set, args.steps, args.phases, args.run_dir)

    device = pick_device(args.device, what="--device")
    args.out = args.out or default_out(args)
    header = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
              or platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "cpu_count": os.cpu_count(), "overrides": args.set}
    results: dict = {"env": header, "configs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        if args.kmeans:
            results["kmeans"] = kmeans_race(device, Path(tmp))
            k = results["kmeans"]
            print(f"sklearn KMeans(n_init=10): {k['sklearn']['seconds']:.1f} s, inertia {k['sklearn']['inertia']:.0f}; "
                  f"kmeans_net reached within 0.1%: {k['kmeans_net']['reached']}; ratio {k['ratio_sklearn_over_net']}")
        else:
            paths = args.configs or sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").glob("*.yaml"))
            overrides = [f"train.device={device.type}", *args.set]
            configs = {path: load_config(str(ROOT / path) if not Path(path).is_absolute() else path, overrides)
                       for path in paths}  # every config checked before the first measurement
            print(f"{'config':28s} {'zoo':>10s} {'minimal':>10s} {'loader':>10s} {'zoo/min':>8s} {'zoo/ldr':>8s} "
                  f"{'MFLOP/it':>9s}   whole run (s)", flush=True)
            for i, path in enumerate(paths):
                cfg = configs[path]
                row = steady_state(cfg, device, args.rounds, args.window, Path(tmp) / f"s{i}")
                if not args.no_whole_run:  # about --run-seconds of steps, at least 5
                    steps = max(5, min(args.steps, round(args.run_seconds / row["seconds_per_step"])))
                    row["whole_run"] = whole_run(str(ROOT / path), overrides, steps)
                    row["whole_run"]["num_steps"] = steps
                results["configs"][path] = row
                thr = row["items_per_s"]
                wr = row.get("whole_run")
                split = " ".join(f"{k.replace(' ', '-')}={v:.2f}" for k, v in (wr or {}).items() if k != "num_steps")
                mflop = f"{row['flops_per_item'] / 1e6:9.2f}" if row["flops_per_item"] else f"{'-':>9s}"
                print(f"{Path(path).stem:28s} {thr['zoo']:10.0f} {thr['minimal']:10.0f} {thr['dataloader']:10.0f} "
                      f"{row['ratio_vs_minimal']:8.3f} {row['ratio_vs_dataloader']:8.2f} {mflop}   {split}",
                      flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    script_main(main)
