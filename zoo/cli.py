"""The `zoo` command line: train, sample, reconstruct, eval, compress, list, config show.

Commands are offered by capability (a model that can ``sample``, ``reconstruct``...), never by model or data name.

Bad input (config, path, checkpoint, argument) ends with exit status 2 and one line on stderr that says what
is wrong and how to fix it; never a traceback.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import typer
from typer.exceptions import Abort, Exit, TyperException

from .distributed import launch_env, speaks_for_machine
from .errors import ZooError
from .runtime import SEED_MAX

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train, sample and inspect the zoo's models from YAML configs.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect configs.")
app.add_typer(config_app, name="config")


#: What a model can do besides training, each an optional ZooModel method; a command that needs one checks it.
CAPABILITIES = ("sample", "reconstruct", "translate", "compress")


def _err(msg: str, every_rank: bool = True) -> None:
    """A line on stderr; with ``every_rank`` False, under torchrun once per machine (``speaks_for_machine``)."""
    if every_rank or speaks_for_machine():
        print(msg, file=sys.stderr, flush=True)


def _which(checkpoint: str) -> str:
    """--checkpoint: last or best, else one line."""
    if checkpoint not in ("last", "best"):
        raise ZooError(f"--checkpoint {checkpoint!r}: choose last or best")
    return checkpoint


def _output(out: Path, suffix: str = ".png", why: str = "") -> Path:
    """-o: a file of this kind in a place that can take it, checked before any work; else one line."""
    if out.suffix.lower() != suffix:
        raise ZooError(f"-o {out}: write a {suffix} file" + (f" ({why})" if why else ""))
    if out.is_dir():
        raise ZooError(f"-o {out} is a directory; name a {suffix} file")
    folder = out.parent
    while not folder.exists() and folder != folder.parent:  # the nearest existing folder: created below it
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ZooError(f"-o {out}: '{folder}' is not a folder this user can write in; pick another path")
    return out


@contextlib.contextmanager
def _writing(out: Path):
    """What the checks above cannot foresee (a full disk, /proc): one line, not a traceback."""
    try:
        yield
    except OSError as e:
        raise ZooError(f"cannot write {out} ({e.strerror or e}); pick another path") from None


def _images(t, what: str, cfg: dict):
    """What ``zoo sample``/``reconstruct`` draw must be images; points or sequences are one line, not a PNG of
    numbers."""
    from .visuals import is_image_batch

    if not is_image_batch(t):
        raise ZooError(f"{what} of model '{cfg['model']['name']}' on data '{cfg['data']['name']}' are not images "
                       f"[N, C, H, W] with 1 or 3 channels (shape {tuple(t.shape)}), so there is no PNG grid to "
                       f"write; use zoo eval")
    return t


def require(model, capability: str, cfg: dict) -> None:
    """One line when a run's model lacks what the command needs."""
    if not callable(getattr(model, capability, None)):
        can = [c for c in CAPABILITIES if callable(getattr(model, c, None))]
        able = ", ".join(can) or "only be evaluated"
        raise ZooError(f"model '{cfg['model']['name']}' cannot {capability}; it can: {able} "
                       f"(`zoo list` shows what each model can do)")


@dataclass
class EvalContext:
    """What a model's ``evaluate`` may use besides its data."""

    device: Any
    run_dir: Path
    seed: int = 0
    config: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    baselines: bool = True  # reference methods on the same data (scikit-learn k-means, Gaussian fits, ...)

    def log(self, msg: str) -> None:
        _err(msg)


@app.command()
def train(
    config: Path = typer.Argument(..., help="YAML config, e.g. configs/vae.yaml"),
    overrides: Optional[list[str]] = typer.Argument(None, help="dotted overrides: train.epochs=2 model.latent_dim=16"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir",
                                           help="output dir (default runs/<name>, numbered if taken)"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue the run in this dir from its last.pt"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar or per-epoch lines"),
    allow_changes: bool = typer.Option(False, "--allow-changes",
                                       help="resume even though train keys that change the numbers differ "
                                            "(recorded in the run dir's changes.yaml)"),
    dry_run: bool = typer.Option(False, "--dry-run",
                                 help="smoke-test the config in seconds: 2 training steps, 2 validation batches, "
                                      "the epoch end and a checkpoint loaded back alone, in a dir then deleted"),
):
    """Train a model from a YAML config (on CUDA when present, else CPU)."""
    from .config import load_config
    from .trainer import fit

    cfg = load_config(config, overrides or [])
    if dry_run:
        if resume is not None or run_dir is not None:
            raise ZooError("--dry-run trains a throwaway run in a temporary dir; drop --resume/--run-dir")
        return _dry_run(cfg, quiet)
    if resume is not None and run_dir is not None and Path(resume) != Path(run_dir):
        raise ZooError("give either --resume RUN_DIR or --run-dir DIR, not two different dirs")
    target = resume or run_dir
    if resume is not None and not (Path(resume) / "checkpoints").is_dir():
        raise ZooError(f"--resume {resume}: no checkpoints/ there; pass the dir of a run started by zoo train")
    trainer = fit(cfg, target, quiet=quiet, resume=resume is not None, allow_changes=allow_changes)
    m = trainer.metrics
    last = m["epochs"][-1] if m["epochs"] else {}
    shown = ", ".join(f"{k}={v:.4g}" for k, v in last.items() if k.startswith("val/"))
    main = trainer.dist.is_main  # under torchrun, rank 0 speaks for all
    if main:
        print(f"{m['status']}: {trainer.run_dir} (epoch {m['epoch']}, step {m['step']}{', ' + shown if shown else ''})")
    if m["status"] == "interrupted":  # Ctrl-C or SIGTERM: last.pt was saved after a whole batch
        if main:
            again = "torchrun ... -m zoo" if trainer.dist.enabled else "zoo"
            # the run's own config.yaml holds the overrides of this command line: resuming from it always fits
            print(f"continue with: {again} train {trainer.run_dir / 'config.yaml'} --resume {trainer.run_dir}",
                  file=sys.stderr)
        raise Exit(130)


def _dry_run(cfg: dict, quiet: bool, batches: int = 2) -> None:
    """pytorch/examples' --dry-run, Lightning's fast_dev_run: every stage a run goes through, on a few batches."""
    import shutil
    import tempfile
    import time

    from .checkpoint import load_run
    from .data import data_parameters
    from .trainer import Trainer

    if launch_env()["world"] > 1:
        raise ZooError("--dry-run runs in one process; run it with plain zoo train, not torchrun")
    cfg["train"].update(epochs=1, max_steps=None, log_every=1)  # one epoch, each step logged
    if "limit" in data_parameters(cfg["data"]["name"]) and cfg["data"].get("limit") is None:
        cfg["data"]["limit"] = batches * cfg["train"]["batch_size"]  # epoch-end hooks that read a whole split
    start, where = time.perf_counter(), Path(tempfile.mkdtemp(prefix="zoo-dry-run-"))
    try:
        trainer = Trainer(cfg, where / "run", quiet=quiet, log=_err, dry_run=batches)
        metrics = trainer.fit()
        load_run(trainer.run_dir, "cpu")  # a checkpoint alone rebuilds the model
    finally:
        shutil.rmtree(where, ignore_errors=True)
    shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics["epochs"][-1].items() if k.startswith("val/"))
    print(f"dry run passed in {time.perf_counter() - start:.1f} s: {metrics['step']} training step(s), "
          f"{batches} validation batch(es) at most ({shown}), the epoch's end (hooks, visuals, checkpoint) and the "
          "checkpoint loaded back alone; no run dir was kept (and no end-of-run outputs made)")


@app.command()
def sample(
    run: Path = typer.Argument(..., help="run dir (runs/NAME) or checkpoint .pt"),
    n: int = typer.Option(64, "-n", min=1, max=10000, help="number of images"),
    out: Path = typer.Option(Path("samples.png"), "-o", "--out", help="PNG grid to write"),
    temperature: float = typer.Option(1.0, "--temperature", "-t", min=0.0, max=100.0,
                                      help="scale of the latent noise"),
    prior: Optional[str] = typer.Option(None, "--prior", help="latent prior for models with several "
                                        "(e.g. standard|fitted); default: the model's own"),
    seed: int = typer.Option(0, "--seed", min=0, max=SEED_MAX),
    device: str = typer.Option("auto", "--device", help="auto|cpu|cuda|cuda:N"),
):
    """Generate images from a trained generative model's checkpoint alone."""
    import torch

    from .checkpoint import load_run
    from .runtime import pick_device
    from .visuals import save_png

    model, cfg, _ = load_run(run, pick_device(device, what="--device"))
    require(model, "sample", cfg)
    _output(out)
    extra = {"prior": _prior(model, prior, cfg)} if prior else {}
    images = model.sample(n, generator=torch.Generator().manual_seed(seed), temperature=temperature, **extra)
    _images(images, "the samples", cfg)
    with _writing(out):
        save_png(images, out)
    print(f"wrote {n} samples to {out}")


def _prior(model, prior: str, cfg: dict) -> str:
    have = getattr(model, "priors", None)
    if not have:  # the model's sample() takes no prior: any --prior is a mistake, not a TypeError later
        raise ZooError(f"--prior {prior}: model '{cfg['model']['name']}' has a single prior; drop --prior")
    if prior not in have:
        raise ZooError(f"--prior {prior}: model '{cfg['model']['name']}' of this run samples from "
                       f"{' or '.join(have)}" + (" (a fitted prior needs model.prior_components > 0 and one "
                                                   "finished epoch: it is fitted at the end of each)"
                                                   if prior == "fitted" else ""))
    return prior


@app.command()
def reconstruct(
    run: Path = typer.Argument(..., help="run dir (runs/NAME) or checkpoint .pt"),
    n: int = typer.Option(32, "-n", min=1, max=1000, help="number of test items"),
    out: Path = typer.Option(Path("reconstructions.png"), "-o", "--out", help="PNG to write"),
    seed: int = typer.Option(0, "--seed", min=0, max=SEED_MAX, help="seed of the data's transform noise"),
    device: str = typer.Option("auto", "--device", help="auto|cpu|cuda|cuda:N"),
):
    """Reconstruct test items: originals in the top half of the grid, reconstructions below."""
    import torch

    from .checkpoint import load_run
    from .data import create_data
    from .runtime import pick_device
    from .visuals import save_png

    model, cfg, _ = load_run(run, pick_device(device, what="--device"))
    require(model, "reconstruct", cfg)
    _output(out)
    data = create_data(**cfg["data"])
    x = _images(next(data.batches("test", n, generator=torch.Generator().manual_seed(seed)))[0], "the test items",
                cfg).to(model.device)
    with torch.no_grad():
        pair = torch.cat([x, _images(model.reconstruct(x), "the reconstructions", cfg)])
    with _writing(out):
        save_png(pair, out)
    print(f"wrote {n} test items and their reconstructions to {out}")


@app.command("eval")
def evaluate(
    run: Path = typer.Argument(..., help="run dir (runs/NAME) or checkpoint .pt"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    checkpoint: str = typer.Option("last", "--checkpoint", help="last or best"),
    seed: int = typer.Option(0, "--seed", min=0, max=SEED_MAX, help="seed of the evaluation noise and samples"),
    device: str = typer.Option("auto", "--device", help="auto|cpu|cuda|cuda:N"),
    evaluator: Optional[Path] = typer.Option(None, "--evaluator", help="evaluator run dir for FID-LeNet"),
    data_path: Optional[Path] = typer.Option(None, "--data", help="evaluate on this file instead of the run's "
                                             "held-out split (models that read one, e.g. word pairs)"),
    fid: bool = typer.Option(True, "--fid/--no-fid", help="FID-LeNet and mode coverage for models that sample"),
    iw_samples: Optional[int] = typer.Option(None, "--iw-samples", min=0, max=100000,
                                             help="importance samples per test image for likelihood bounds "
                                                  "(default 100; 0: skip)"),
    baselines: bool = typer.Option(True, "--baselines/--no-baselines",
                                   help="reference methods on the same data (the slow part of some evals)"),
    views: int = typer.Option(1, "--views", min=1, max=360,
                              help="also vote over this many augmented copies of each test item (models that "
                                   "support it, e.g. point clouds: rotations); 1: no voting"),
):
    """Report a trained model's metrics (with baselines measured on the same data)."""
    import torch

    from .checkpoint import find_checkpoint, load_run
    from .data import create_data
    from .runtime import pick_device, seed_everything

    _which(checkpoint)
    dev = pick_device(device, what="--device")
    model, cfg, ck = load_run(run, dev, which=checkpoint)
    if data_path is not None and not model.evaluates_files:
        raise ZooError(f"--data: model '{cfg['model']['name']}' evaluates on its own data split, not on a file; "
                       f"drop --data")
    if views > 1 and not model.evaluates_views:
        raise ZooError(f"--views: model '{cfg['model']['name']}' does not vote over augmented copies; drop --views")
    if iw_samples is not None and not model.evaluates_iw_samples:
        raise ZooError(f"--iw-samples: model '{cfg['model']['name']}' has no importance-weighted bound; "
                       f"drop --iw-samples")
    if evaluator is not None and not (fid and callable(getattr(model, "sample", None))):
        raise ZooError(f"--evaluator: no FID-LeNet here (model '{cfg['model']['name']}' draws no samples, or "
                       f"--no-fid); drop --evaluator")
    if data_path is not None and not data_path.is_file():
        raise ZooError(f"--data {data_path}: no such file")
    seed_everything(seed)
    if data_path is None:
        data = create_data(**cfg["data"]).to(dev)
    else:  # the run's own data only if the model asks for it (its baselines): a checkpoint and a file will do
        data = _OnDemand(lambda: create_data(**cfg["data"]).to(dev))
    path = find_checkpoint(run, checkpoint)
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    options = {"evaluator": evaluator, "data": data_path, "iw_samples": 100 if iw_samples is None else iw_samples,
               "views": views}
    ctx = EvalContext(dev, run_dir, seed, cfg, options, baselines)
    shown = run_dir if path.parent.name == "checkpoints" else path  # a lone file (an export) names itself
    out: dict[str, Any] = {"run": str(shown), "model": ck["model_name"], "epoch": ck["epoch"], "step": ck["step"]}
    with torch.no_grad():
        out.update(model.evaluate(data, ctx))
    if fid and callable(getattr(model, "sample", None)):
        from .fid import applies, generative_metrics

        if applies(data):
            priors = getattr(model, "priors", None)  # models with several: the default's figures are "generative"
            if not priors:
                out["generative"] = generative_metrics(model, data, ctx)
            for i, prior in enumerate(priors or ()):
                key = "generative" if i == 0 else f"generative_{prior}_prior"
                out[key] = generative_metrics(model, data, ctx, prior=prior)
    if as_json:
        from .runlog import strict_json

        print(strict_json(out))
    else:
        for k, v in _flatten(out).items():
            print(f"{k:40s} {v:.6g}" if isinstance(v, float) else f"{k:40s} {v}")


class _OnDemand:
    """A data module built the first time one of its attributes is read."""

    def __init__(self, build):
        self._build, self._data = build, None

    def __getattr__(self, name):
        if self._data is None:
            self._data = self._build()
        return getattr(self._data, name)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


@app.command()
def translit(
    run: Path = typer.Argument(..., help="run dir (runs/NAME) or checkpoint .pt"),
    text: Optional[str] = typer.Argument(None, help="text to convert; without it, stdin is read and one line is "
                                                    "printed per input line"),
    beam: Optional[int] = typer.Option(None, "--beam", "-k", min=1, max=1000,
                                       help="beam width (default: the run's config)"),
    nbest: int = typer.Option(1, "--nbest", "-n", min=1, max=1000,
                              help="the N best candidates of each line, with scores"),
    temperature: float = typer.Option(0.0, "--temperature", "-t", min=0.0, max=100.0,
                                      help="> 0: sample instead of search"),
    seed: int = typer.Option(0, "--seed", min=0, max=SEED_MAX, help="seed of sampling"),
    checkpoint: str = typer.Option("last", "--checkpoint", help="last or best"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1,
                                            help="words decoded at once (default: the model's)"),
    device: str = typer.Option("cpu", "--device", help="auto|cpu|cuda|cuda:N"),
):
    """Transliterate text with a model that can translate, word by word (digits/punctuation pass through)."""
    import itertools

    from .beam import best_combinations
    from .checkpoint import load_run
    from .runtime import pick_device

    _which(checkpoint)
    if temperature > 0 and ((beam or 1) > 1 or nbest > 1):
        raise ZooError("--temperature draws one candidate per word; drop --beam/--nbest to sample")
    model, cfg, _ = load_run(run, pick_device(device, what="--device"), which=checkpoint)
    require(model, "translate", cfg)
    if beam is not None and nbest > beam:
        raise ZooError(f"--nbest {nbest} needs a beam at least as wide: add --beam {nbest}")
    if text is None and sys.stdin is None:  # started with stdin closed (<&-)
        raise ZooError("no TEXT and stdin is closed: give the text, or pipe a file (zoo translit RUN < words.txt)")
    # UTF-8 whatever the locale (a byte-order mark opening the input is dropped); undecodable bytes never crash
    for stream, encoding in ((sys.stdout, "utf-8"), (sys.stdin, "utf-8-sig")):
        try:
            stream.reconfigure(encoding=encoding, errors="replace")
        except (AttributeError, ValueError, OSError):  # not a text stream we may change: keep it as it is
            pass
    lines = iter([text]) if text is not None else (ln.rstrip("\r\n") for ln in sys.stdin)
    done, block = 0, 2000  # bounded memory for any input length: blocks of lines, streamed out
    cache: dict = {}  # words already converted, across blocks (bounded below)
    while True:
        chunk = list(itertools.islice(lines, block))
        if not chunk:
            break
        words = sum(len(ln.split()) for ln in chunk)
        progress = _progress if words > 20000 else None
        if len(cache) > 500_000:
            cache.clear()
        for row in model.translate(chunk, beam=beam, nbest=nbest, temperature=temperature, seed=seed,
                                   batch_size=batch_size, progress=progress, cache=cache):
            if nbest == 1:
                print(" ".join(cands[0][0] for _, cands in row))
            elif row:  # the line's n best: its words' candidates combined, one output line per input line
                best = best_combinations([cands for _, cands in row], nbest, " ")
                print(" ".join(token for token, _ in row) + "\t" + "\t".join(f"{c} ({s:.3f})" for c, s in best))
            else:
                print()
        sys.stdout.flush()
        done += len(chunk)
        if done % (10 * block) == 0:
            _err(f"{done} lines done")


def _progress(done: int, total: int) -> None:
    """Progress of a long input on stderr (stdout stays the aligned output)."""
    if done == total or done * 10 // total != (done - 1) * 10 // total:
        _err(f"  {done}/{total} distinct words")


@app.command()
def export(
    run: Path = typer.Argument(..., help="run dir (runs/NAME) or checkpoint .pt"),
    out: Path = typer.Option(..., "-o", "--out", help="file to write, e.g. vae.safetensors"),
    fmt: str = typer.Option("safetensors", "--format", help="safetensors (weights + config as metadata)"),
    checkpoint: str = typer.Option("last", "--checkpoint", help="last or best"),
):
    """Write a run's weights for sharing: no pickle, loadable anywhere; zoo sample/eval accept the file."""
    import torch

    from .checkpoint import export_safetensors, find_checkpoint, load

    if fmt != "safetensors":
        raise ZooError(f"--format {fmt!r}: the only export format is safetensors")
    _output(out, ".safetensors")
    _which(checkpoint)
    ck = load(find_checkpoint(run, checkpoint))
    export_safetensors(ck, out)
    tensors = sum(isinstance(v, torch.Tensor) for v in ck["model"].values())
    print(f"wrote {out}: {tensors} tensors of model '{ck['model_name']}' with its config")


@app.command("list")
def list_cmd(pattern: str = typer.Argument("*", help="shell-style pattern, e.g. '*_ae'")):
    """List registered models (name, family, config, what it can do)."""
    from .registry import list_models

    infos = list_models(pattern)
    if not infos:
        raise ZooError(f"no model matches '{pattern}'; `zoo list` shows them all")
    def can(i):
        return ",".join(c for c in CAPABILITIES if callable(getattr(i.builder, c, None))) or "-"

    rows = [(i.name, i.family, i.config or "-", can(i), i.description) for i in infos]
    widths = [max(len(r[k]) for r in rows) for k in range(4)]
    for r in rows:
        print("  ".join(r[k].ljust(widths[k]) for k in range(4)) + "  " + r[4])


@config_app.command("show")
def config_show(
    config: Path = typer.Argument(..., help="YAML config"),
    overrides: Optional[list[str]] = typer.Argument(None, help="dotted overrides"),
    check: bool = typer.Option(False, "--check", help="also build the data's declaration and the model, so values "
                               "only a constructor can judge (model.latent_dim=-3) are refused as zoo train would"),
):
    """Print the resolved config, with every default filled in."""
    from .config import dump, load_config

    cfg = load_config(config, overrides or [])
    if check:  # what zoo train builds before its first step, without a run dir, a device or the data's tensors
        from .data import build_data
        from .registry import build_model

        build_model(cfg["model"], build_data(**cfg["data"]).info)
    print(dump(cfg), end="")


@app.command()
def compress(
    image: Path = typer.Argument(..., help="image to quantise (PNG, JPEG...)"),
    k: int = typer.Option(16, "-k", help="number of colours (2, 4, 8, 16...)"),
    out: Path = typer.Option(..., "-o", "--out", help="PNG to write"),
    method: str = typer.Option("net", "--method", help="net (the k-means network, SGD) or lloyd"),
    seed: int = typer.Option(0, "--seed", min=0, max=SEED_MAX),
):
    """Compress an image by k-means on its RGB pixels: each pixel becomes its cluster's colour."""
    from .compress import PNG_ONLY, compress_file

    with _writing(_output(out, why=PNG_ONLY)):
        r = compress_file(image, k, out, method, seed)
    print(f"wrote {out}: k={k} ({method}), compression factor 24/log2(k) = {r['compression_factor']:.3g}, "
          f"mse = {r['mse']:.6f} (pixels in [0, 1]), psnr = {r['psnr_db']:.2f} dB, {r['seconds']:.2f} s")


def _interrupted(command: str) -> None:
    """Ctrl-C outside the training loop (which saves and prints its own resume command)."""
    _err(f"interrupted: zoo {command} stopped before it finished" + (
        "; resume with zoo train CONFIG --resume RUN_DIR" if command == "train" else ""))


@functools.cache
def _click_command():
    """The click command typer builds from the functions above. ``app(...)`` builds it again on every call
    (13 ms, evaluating each parameter's annotation), which tests that call ``main`` thousands of times pay."""
    return typer.main.get_command(app)


def main(argv: list[str] | None = None) -> int:
    """Entry point: one line and exit 2 on bad input; usage errors are folded to one line too."""
    args = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in args if not a.startswith("-")), "")
    if sys.stdout is None or sys.stderr is None:  # started with >&- or 2>&-: nowhere to answer
        if sys.stderr is not None:
            _err("error: stdout is closed; send it to a file or to /dev/null")
        return 2
    for stream in (sys.stdout, sys.stderr):  # a path or word the terminal's encoding lacks prints escaped
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.reconfigure(errors="backslashreplace")
    try:
        rc = _click_command()(args=args, standalone_mode=False, prog_name="zoo")
        if isinstance(rc, int):  # typer.Exit(code) raised in a command comes back as its code here
            if rc == 130 and command != "train":  # typer's answer to Ctrl-C; training prints its own
                _interrupted(command)
            return rc
    except ZooError as e:
        _err(f"error: {e}", every_rank=False)
        return 2
    except Exit as e:
        return e.exit_code
    except Abort:
        _err("aborted")
        return 130
    except TyperException as e:  # usage errors; "no command" (its help already printed) has no message
        message = (e.format_message().splitlines() or ["no command given: pick one of those listed"])[0]
        _err(f"error: {message} (see zoo --help)", every_rank=False)
        return 2
    except KeyboardInterrupt:
        _interrupted(command)
        return 130
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EPIPE):
            raise
        # stdout is full or gone (> /dev/full, a closed pipe): say so once, and let the exit flush go nowhere
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        _err(f"error: cannot write the output ({e.strerror}); free space or check where it goes")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
