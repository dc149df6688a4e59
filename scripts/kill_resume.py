"""Kill a training run with SIGKILL at random moments, resume it each time, and compare with an uninterrupted run.

    python scripts/kill_resume.py CONFIG [--kills 5] [--seed 0] [key=value ...]

Trains CONFIG once without interruption, then again in another run dir, killing the process with SIGKILL at
random moments (checkpoint writes included when train.ckpt_every is small) and resuming with --resume until it
finishes. Prints how many kills it survived and whether the final weights, the logged losses in metrics.json
and the TensorBoard curves equal the uninterrupted run's, writes the figures as JSON (--out), and exits 1 if
anything differs.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from zoo.checkpoint import digest, load
from zoo.errors import ZooError, out_file, script_main


def zoo(*args: str) -> list[str]:
    return [sys.executable, "-m", "zoo", *args]


def event_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every logged training term as TensorBoard shows it: (step, value) over all event files of the dir,
    purges applied (throughput, which depends on the machine, left out)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]
            if tag.startswith("train/") and tag != "train/items_per_s"}


def newest_step(run_dir: Path) -> int:
    steps = [int(p.stem.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*.pt")] \
        if (run_dir / "checkpoints").is_dir() else []
    return max(steps, default=0)


def final_state(run_dir: Path) -> tuple[dict, list]:
    ck = load(run_dir / "checkpoints" / "last.pt")
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    return ck["model"], history


def _status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "metrics.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


def kill_and_resume(config: str, overrides: list[str], kills: int, seed: int, workdir: Path,
                    log=print) -> dict:
    rng = random.Random(seed)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ref_dir, run_dir = workdir / "reference", workdir / "killed"
    t0 = time.perf_counter()
    ref = subprocess.run(zoo("train", config, *overrides, "--run-dir", str(ref_dir), "--quiet"), env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if ref.returncode != 0:  # a wrong config or override: zoo's own one-line message
        last = (ref.stderr.strip().splitlines() or ["no message"])[-1]
        raise ZooError(f"the reference run failed: {last.removeprefix('error: ')}")
    reference_seconds = time.perf_counter() - t0
    total = json.loads((ref_dir / "metrics.json").read_text())["step"]
    if total < kills + 1:
        raise ZooError(f"the run has {total} steps: too short for {kills} kills; train longer or kill less")
    # kill moments: after random steps, plus a random few milliseconds (often inside a checkpoint write)
    targets = sorted(rng.sample(range(1, total), kills))
    survived, launches = 0, 0
    while True:
        if survived >= kills and _status(run_dir) == "finished":
            break  # the last kill came after the run's end: a resume would be refused, and is not needed
        started = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").glob("step-*.pt"))
        cmd = zoo("train", config, *overrides, "--quiet", *(["--resume", str(run_dir)] if started
                                                            else ["--run-dir", str(run_dir)]))
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        launches += 1
        if survived >= kills:
            _, err = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"the final resume failed: {err.strip().splitlines()[-1:]}")
            break
        while proc.poll() is None and newest_step(run_dir) < targets[survived]:
            time.sleep(0.002)
        if proc.poll() is not None:
            raise RuntimeError(f"launch {launches} ended before its kill: {proc.stderr.read().strip()[-300:]}")
        time.sleep(rng.uniform(0.0, 0.02))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        survived += 1
        log(f"launch {launches}: SIGKILL #{survived} after step {newest_step(run_dir)}")
    ref_weights, ref_losses = final_state(ref_dir)
    weights, losses = final_state(run_dir)
    same_weights = digest(ref_weights) == digest(weights)  # every tensor bit for bit, extra state included
    ref_curve, curve = event_curves(ref_dir), event_curves(run_dir)
    steps = [s for points in curve.values() for s, _ in points]
    ref_steps = {(tag, s) for tag, points in ref_curve.items() for s, _ in points}
    return {"config": config, "overrides": overrides, "kills": survived, "launches": launches,
            "identical_weights": same_weights, "identical_losses": losses == ref_losses,
            "identical_tensorboard_curve": curve == ref_curve,
            "duplicated_steps": len(steps) - len({(tag, s) for tag, points in curve.items() for s, _ in points}),
            "missing_steps": len(ref_steps - {(tag, s) for tag, points in curve.items() for s, _ in points}),
            "reference_seconds": round(reference_seconds, 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.ckpt_every=1")
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    p.add_argument("--out", type=out_file, default=None, help="write the result as JSON here")
    a = p.parse_args()
    if a.kills < 1:
        p.error("--kills must be at least 1")
    with tempfile.TemporaryDirectory() as tmp:
        result = kill_and_resume(a.config, a.overrides, a.kills, a.seed, Path(tmp))
    ok = result["identical_weights"] and result["identical_losses"] and result["identical_tensorboard_curve"]
    print(f"survived {result['kills']} SIGKILLs in {result['launches']} launches: "
          f"{'identical' if ok else 'DIFFERENT'} results (weights {result['identical_weights']}, "
          f"losses {result['identical_losses']}, TensorBoard curve {result['identical_tensorboard_curve']}, "
          f"{result['duplicated_steps']} duplicated and {result['missing_steps']} missing steps)")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(script_main(main))
