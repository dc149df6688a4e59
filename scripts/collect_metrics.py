"""Evaluate finished runs with `zoo eval --json` and gather the figures the README's model table shows.

    python scripts/collect_metrics.py runs/vae runs/vae-diagonal ... [--out runs/metrics.json]

Prints one line per run and writes every run's full JSON to --out.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from zoo.errors import out_file, script_main


def evaluate(run: str, extra: list[str]) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "zoo.cli", "eval", run, "--json", *extra],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
        return {"run": run, "error": last.removeprefix("error: ")}
    out = json.loads(proc.stdout)
    out["eval_seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", type=out_file, default="runs/metrics.json")
    ap.add_argument("--eval-args", default="", help="extra zoo eval arguments, e.g. '--no-fid'")
    args = ap.parse_args()
    results = []
    for run in args.runs:
        res = evaluate(run, args.eval_args.split())
        results.append(res)
        flat = {k: v for k, v in res.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        print(run, f"error: {res['error']}" if "error" in res else json.dumps(flat), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")
    failed = [r["run"] for r in results if "error" in r]
    if failed:  # the others' figures are kept in --out; the status says some are missing
        print(f"error: {len(failed)} of {len(results)} runs could not be evaluated: {', '.join(failed)}",
              file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    script_main(main)
