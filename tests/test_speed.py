"""Speed options and the per-step contract, checked on the CPU: no host read inside a training step, bf16
autocast, channels_last, compiled steps whose checkpoints load into a plain model, threads, and the bench."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import communicate_all, small_vae_config
from zoo import checkpoint as ckpt_io
from zoo.config import load_config
from zoo.errors import ConfigError
from zoo.registry import create_model
from zoo.runtime import StepWindow, StopRequests, set_threads
from zoo.trainer import Trainer, fit

ROOT = Path(__file__).resolve().parents[1]


def lenet_config(root, **train):
    return load_config({"name": "l", "model": {"name": "lenet", "conv1": 8, "conv2": 16, "hidden": 32},
                        "data": {"name": "mnist", "root": str(root), "limit": 256, "val_size": 100},
                        "train": {"epochs": 1, "batch_size": 32, "seed": 1, "device": "cpu", "log_every": 4,
                                  **train}})


def test_a_training_step_reads_nothing_back_to_the_host_between_logs(mnist_root, tmp_path, monkeypatch):
    """Host reads (item, bool, float, tolist) by zoo's code happen only at logging steps; the 3 steps in between
    read none. (Adam's CPU kernel reads its own step counter, a CPU tensor even when training on a GPU.)
    Reads are due at every log point here; by default they wait up to a second (next test)."""
    monkeypatch.setattr(StepWindow, "READ_SECONDS", 0.0)
    tr = Trainer(load_config(small_vae_config(mnist_root, log_every=4, max_steps=8)), tmp_path / "r", quiet=True)
    tr.runlog.open(0, {})
    reads: list[tuple[int, str]] = []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        real = getattr(torch.Tensor, name)

        def counting(self, *a, _real=real, _name=name, **k):
            caller = sys._getframe(1).f_code.co_filename
            if f"{os.sep}zoo{os.sep}" in caller:
                reads.append((tr.step, _name, Path(caller).name))
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counting)
    tr._loop(StopRequests())
    monkeypatch.undo()
    tr.runlog.close()
    steps_with_reads = sorted({s for s, _, _ in reads})
    assert tr.step == 8 and steps_with_reads and set(steps_with_reads) <= {4, 8}, reads


def test_deferred_log_reads_give_the_numbers_of_reads_at_every_log_point(mnist_root, tmp_path, monkeypatch):
    """Log points read and published a second later, together, log the same means at the same steps as log
    points published at once; until then nothing is read back, and a checkpoint publishes everything first."""
    histories = []
    for i, seconds in enumerate((0.0, 1e9)):
        monkeypatch.setattr(StepWindow, "READ_SECONDS", seconds)
        tr = Trainer(load_config(small_vae_config(mnist_root, log_every=2, max_steps=6)), tmp_path / f"r{i}",
                     quiet=True)
        tr.runlog.open(0, {})
        tr._loop(StopRequests())
        unread = len(tr.window.entries)
        pending = [row[0] for row in tr.window.logs] + [m[1] for m in tr.window.marks]
        assert pending == ([] if seconds == 0 else [2, 4, 6]), pending  # deferred: marked, not yet published
        assert unread == (6 if seconds else 0)  # nothing read back yet
        tr.save()  # a checkpoint publishes what is pending
        tr.runlog.close()
        assert tr.window.logs == tr.window.marks == tr.window.entries == []
        histories.append(tr.runlog.history)
    assert [h["step"] for h in histories[0]] == [2, 4, 6]
    assert histories[0] == histories[1]


def test_step_window_reads_scalar_and_non_scalar_terms_and_finds_the_first_nan_loss():
    """One stack for 0-d terms (bf16 among them), the mean of a non-scalar term, per-log-point means, and the
    NaN check: a NaN in a non-loss term is logged but does not stop the run; the first NaN loss is reported."""
    t = torch.tensor
    window = StepWindow()
    window.add(1, {"loss": t(1.0), "acc": t(0.5, dtype=torch.bfloat16)})
    window.add(2, {"loss": t(3.0), "acc": t(float("nan"))})
    window.mark(2, 0, 4, 1.0)
    assert window.take_logs() == [(2, 0, 4, 1.0, {"loss": 2.0, "acc": pytest.approx(float("nan"), nan_ok=True)})]
    assert window.bad is None
    window.add(3, {"loss": t(5.0), "acc": t([1.0, 3.0])})  # a non-scalar term: its mean
    window.add(4, {"loss": t(float("inf")), "acc": t([0.0, 1.0])})
    window.add(5, {"loss": t(float("nan")), "acc": t([0.0, 0.0])})
    window.mark(5, 0, 10, 2.0)
    (step, epoch, seen, seconds, means), = window.take_logs()
    assert (step, means["acc"]) == (5, pytest.approx((2.0 + 0.5 + 0.0) / 3))
    assert window.bad[:2] == (4, "loss")  # the first one, not the last
    sparse = StepWindow()  # a term only some steps log: its mean is over those steps, (2) / 1, not (2) / 2
    sparse.add(1, {"loss": t(1.0), "a": t(2.0)})
    sparse.add(2, {"loss": t(3.0)})
    sparse.mark(2, 0, 4, 1.0)
    assert sparse.take_logs() == [(2, 0, 4, 1.0, {"loss": (1.0 + 3.0) / 2, "a": 2.0 / 1})]
    finite = StepWindow()  # the largest fp32 numbers: their sum (in Python floats) stays finite, nothing is flagged
    finite.add(1, {"loss": t(3e38), "x": t(-3e38)})
    finite.read()
    assert finite.bad is None and finite.open == [(1, {"loss": pytest.approx(3e38), "x": pytest.approx(-3e38)})]


def test_the_event_file_writes_tensorboards_own_records_and_tensorboard_reads_them(tmp_path):
    """zoo writes TensorBoard events in its own thread (EventFile): the bytes of each record are those of
    TensorBoard's RecordWriter (its pure-Python CRC-32C as the oracle), and TensorBoard reads back every kind."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.record_writer import RecordWriter

    from zoo.runlog import EventFile

    (tmp_path / "a").mkdir()
    ev = EventFile(tmp_path / "a")
    path = next((tmp_path / "a").glob("events.out.tfevents.*"))
    start = path.stat().st_size  # the file-version event, written on opening
    events = [Event(step=s, wall_time=1e9 + s, summary=Summary(value=[Summary.Value(tag="loss", simple_value=1 / s)]))
              for s in range(1, 40)]
    for e in events:
        ev.add_event(e)
    ev.flush()
    oracle = io.BytesIO()
    for e in events:
        RecordWriter(oracle).write(e.SerializeToString())
    assert start > 0 and path.read_bytes()[start:] == oracle.getvalue()

    fig = plt.figure()
    plt.plot([0, 1], [1, 0])
    ev.add_figure("fig", fig, 3)
    ev.add_image("img", torch.rand(3, 8, 8), 4)
    ev.add_text("table", "| a |\n|---|\n| 1 |", 5)
    for s in (6, 7):  # a refilled message per set of tags: each event keeps its own numbers
        ev.add_scalars({"a": s, "b": -s}, s)
        ev.add_scalars({"a": 10 * s}, s)
    ev.close()
    acc = EventAccumulator(str(tmp_path / "a"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    assert [s.step for s in acc.Scalars("loss")] == list(range(1, 40))
    assert [i.step for i in acc.Images("fig")] == [3] and [i.step for i in acc.Images("img")] == [4]
    assert [t.step for t in acc.Tensors("table/text_summary")] == [5]
    assert [(s.step, s.value) for s in acc.Scalars("a")] == [(6, 6), (6, 60), (7, 7), (7, 70)]
    assert [(s.step, s.value) for s in acc.Scalars("b")] == [(6, -6), (7, -7)]
    assert not plt.fignum_exists(fig.number)  # figures are closed once logged


def test_event_files_sort_in_the_order_they_were_opened(tmp_path):
    """TensorBoard reads a run's event files in name order, so a resumed run's file must sort after the earlier
    ones, even when a process opens more than ten in one second (a counter 10 sorts before 9 unpadded)."""
    from zoo.runlog import EventFile

    opened = []
    for _ in range(12):
        before = set(tmp_path.iterdir())
        EventFile(tmp_path).close()
        opened += [p.name for p in set(tmp_path.iterdir()) - before]
    assert len(opened) == 12 and sorted(opened) == opened


def test_bf16_autocast_on_the_cpu_trains_and_stays_close_to_fp32(mnist_root, tmp_path):
    full = fit(lenet_config(mnist_root), tmp_path / "a")
    half = fit(lenet_config(mnist_root, precision="bf16"), tmp_path / "b")
    a, b = full.metrics["epochs"][-1]["val/loss"], half.metrics["epochs"][-1]["val/loss"]
    first = full.metrics["history"][0]["loss"]
    assert half.metrics["status"] == "finished" and a < first and b < first  # both learned
    assert a != b and abs(a - b) < 0.05 * a  # bf16 really ran, and it is the same training


def test_channels_last_gives_the_same_training_and_nhwc_weights(mnist_root, tmp_path):
    plain = fit(lenet_config(mnist_root, max_steps=3), tmp_path / "a")
    nhwc = fit(lenet_config(mnist_root, max_steps=3, channels_last=True), tmp_path / "b")
    conv = next(p for p in nhwc.model.parameters() if p.dim() == 4 and p.shape[1] > 1)  # C_in = 1 is both
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    for (k, a), b in zip(plain.model.state_dict().items(), nhwc.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), k


def test_fused_optimizer_steps_are_the_same_training(mnist_root, tmp_path):
    plain = fit(lenet_config(mnist_root, max_steps=3), tmp_path / "a")
    fused = fit(lenet_config(mnist_root, max_steps=3, optimizer={"name": "adam", "lr": 1e-3, "fused": True}),
                tmp_path / "b")
    assert fused.optimizers["main"].defaults["fused"] and not plain.optimizers["main"].defaults["fused"]
    opt = fused.optimizers["main"]
    assert all(int(opt.state[p]["step"]) == 3 for g in opt.param_groups for p in g["params"])
    for (k, a), b in zip(plain.model.state_dict().items(), fused.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), k  # one kernel, other rounding: the same updates
    ck = ckpt_io.load(tmp_path / "b" / "checkpoints" / "last.pt")
    assert ck["config"]["train"]["optimizer"]["fused"] is True


@pytest.mark.parametrize("optimizer", [{"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4},
                                       {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01}])
def test_foreach_updates_train_the_weights_of_torchs_default_loop_bit_for_bit(mnist_root, tmp_path, monkeypatch,
                                                                              optimizer):
    """zoo's optimizers and gradient clipping run foreach kernels on the CPU too, where torch's default is a Python
    loop over the parameters (1-20 ms a step): the same weights, bit for bit, after 3 clipped steps."""
    cfg = lenet_config(mnist_root, max_steps=3, grad_clip=0.5, optimizer=optimizer)
    fast = fit(cfg, tmp_path / "a")
    assert all(g["foreach"] is True for g in fast.optimizers["main"].param_groups)
    import zoo.optim
    import zoo.trainer

    real_build, real_clip = zoo.optim.build_optimizers, torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(zoo.trainer, "build_optimizers", lambda model, t: real_build(model, t, foreach=None))
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, norm, foreach=None: real_clip(params, norm))
    loop = fit(cfg, tmp_path / "b")
    assert all(g["foreach"] is None for g in loop.optimizers["main"].param_groups)
    for (k, a), b in zip(fast.model.state_dict().items(), loop.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_a_resumed_optimizer_keeps_its_foreach_update_whatever_the_checkpoint_saved():
    from zoo.optim import load_optimizer_state

    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.zeros(2))]
    old = torch.optim.Adam(params, lr=0.1)  # a checkpoint saved before zoo chose foreach: foreach None
    for p in params:
        p.grad = torch.full_like(p, 0.5)
    old.step()
    new = torch.optim.Adam(params, lr=0.3, foreach=True)
    load_optimizer_state(new, old.state_dict())
    assert new.param_groups[0]["foreach"] is True and new.param_groups[0]["lr"] == 0.1  # the saved rate
    assert torch.equal(new.state[params[0]]["exp_avg"], old.state[params[0]]["exp_avg"])


def test_a_compiled_run_saves_plain_keys_that_load_into_an_uncompiled_model(tmp_path):
    cfg = load_config({"name": "c", "model": {"name": "linear_regression"},
                       "data": {"name": "synthetic_regression", "n": 256, "dim": 3},
                       "train": {"epochs": 1, "batch_size": 64, "device": "cpu", "compile": "default",
                                 "max_steps": 2}})  # one compiled graph: no validation, no partial batch
    tr = fit(cfg, tmp_path / "r")
    assert hasattr(tr.model.training_step, "_torchdynamo_orig_callable") or "compile" in repr(tr.model.training_step)
    ck = ckpt_io.load(tmp_path / "r" / "checkpoints" / "last.pt")
    plain = create_model("linear_regression", ck["data_info"])
    plain.load_state_dict(ck["model"])  # strict: no _orig_mod. prefixes
    for (k, a), b in zip(tr.model.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), k


def test_processes_sharing_a_machine_share_its_cores(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        set_threads(local_world=max(2, os.cpu_count() or 1))
        assert torch.get_num_threads() == 1
        torch.set_num_threads(before)
        monkeypatch.setenv("OMP_NUM_THREADS", str(before))
        set_threads(local_world=2)  # an explicit OMP_NUM_THREADS wins
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)


def test_the_bench_harness_times_three_loops_and_the_phases_of_a_short_run(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "configs/gan1d.yaml", "--rounds", "3",
                           "--window", "0.05", "--steps", "5", "--out", str(out)], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads(out.read_text())["configs"]["configs/gan1d.yaml"]
    thr = row["items_per_s"]
    assert set(thr) == {"zoo", "minimal", "dataloader"} and min(thr.values()) > 0
    for other in ("minimal", "dataloader"):  # the median of the rounds' ratios
        rounds = row[f"ratio_vs_{other}_per_round"]
        assert len(rounds) == 3 and row[f"ratio_vs_{other}"] == pytest.approx(sorted(rounds)[1])
    phases = row["whole_run"]
    assert phases["num_steps"] == 5 and phases["steps"] > 0 and phases["validation"] > 0
    assert phases["epoch hook"] > 0  # the model's own epoch end (an EM step, a prior refit) has its own phase
    assert phases["total"] == pytest.approx(sum(v for k, v in phases.items() if k not in ("total", "num_steps")))


def test_the_bench_never_overwrites_the_committed_tables_unless_it_remade_them():
    import argparse
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench", ROOT / "scripts" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def out(configs=(), set_=(), device="cpu", kmeans=False):
        return bench.default_out(argparse.Namespace(configs=list(configs), set=list(set_), device=device,
                                                    kmeans=kmeans))
    assert out() == ROOT / "bench" / "results.json"  # the README's full run remakes the committed table
    assert out(kmeans=True) == ROOT / "bench" / "kmeans.json"  # the README says --kmeans writes this file
    for partial in (out(configs=["configs/vae.yaml"]), out(set_=["train.precision=bf16"]), out(device="cuda")):
        assert partial.parent == ROOT / "runs" / "bench" and partial.suffix == ".json"


def test_the_paired_bench_prints_one_ratio_per_round_and_their_median():
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_pair.py"), str(ROOT / "configs" / "gan1d.yaml"),
           "--steps", "20", "--rounds", "3"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    rounds = done.stdout.split("per round [")[1].split("]")[0].split(", ")
    median = float(done.stdout.rsplit("median ", 1)[1])
    assert len(rounds) == 3 and all(float(r) > 0 for r in rounds)
    assert median == pytest.approx(sorted(float(r) for r in rounds)[1], abs=1e-3)
    done = subprocess.run([*cmd, "--against", "train.optimizer.fused=true"], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0 and "zoo train.optimizer.fused=true/zoo per round [" in done.stdout, done.stderr
    done = subprocess.run([*cmd[:3], "--steps", "5", "--rounds", "1", "--minimal-torch-update"], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0 and "(minimal: torch's default update): zoo/minimal per round [" in done.stdout
    bad = (["configs/nope.yaml"], [str(ROOT / "configs" / "gan1d.yaml"), "--steps", "0"],
           [str(ROOT / "configs" / "gan1d.yaml"), "--against", "train.optimizer.fuzed=true"],
           [str(ROOT / "configs" / "gan1d.yaml"), "--against", "train.optimizer.fused=true", "--no-window"])
    procs = [subprocess.Popen([sys.executable, str(ROOT / "scripts" / "bench_pair.py"), *argv], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for argv in bad]  # all at once
    for proc, (_, err) in zip(procs, communicate_all(procs, timeout=120)):
        last = err.strip().splitlines()[-1]  # argparse prints its usage above
        assert proc.returncode == 2 and "error: " in last and "Traceback" not in err, err


def test_an_update_clears_the_last_steps_gradients_as_zero_grad_does():
    from types import SimpleNamespace

    from zoo.optim import apply_update

    def trained(update) -> torch.nn.Linear:
        torch.manual_seed(0)
        net = torch.nn.Linear(3, 2)
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        for x in torch.randn(3, 4, 3):
            update(opt, net(x).pow(2).mean())
        return net

    def by_hand(opt, loss):
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    plain = SimpleNamespace(enabled=False)
    zoo = trained(lambda opt, loss: apply_update(opt, loss, torch.amp.GradScaler("cuda", enabled=False), plain, None))
    ref = trained(by_hand)
    for p, q in zip(zoo.parameters(), ref.parameters()):
        assert torch.equal(p, q) and torch.equal(p.grad, q.grad)  # accumulated gradients would differ from step 2


def test_grad_clip_rescales_the_gradient_to_the_given_norm_before_the_step():
    from zoo.distributed import Dist
    from zoo.optim import apply_update

    p = torch.nn.Parameter(torch.zeros(4))
    opt = torch.optim.SGD([p], lr=1.0)
    # d/dp of sum(100 p) is [100] * 4, norm sqrt(4 * 100^2) = 200; clipped to norm 1: [100 / 200] * 4 = [0.5] * 4
    apply_update(opt, (p * 100).sum(), torch.amp.GradScaler("cuda", enabled=False), Dist(), 1.0)
    assert torch.equal(p.detach(), torch.full((4,), -0.5))  # lr 1: p - 0.5 (unclipped: p - 100)


def test_a_second_ctrl_c_stops_at_once_and_sigterms_only_ask():
    """The first SIGINT asks for a stop after the batch; a second one raises KeyboardInterrupt (the user insists).
    SIGTERM (torchrun, schedulers) only ever asks: it may come twice, and the run still saves its last.pt."""
    import signal

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with StopRequests() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    with StopRequests() as stop:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
        except KeyboardInterrupt:
            pytest.fail("a second SIGTERM raised KeyboardInterrupt: only a second Ctrl-C stops at once")
        assert stop.requested == "SIGTERM"
    assert {sig: signal.getsignal(sig) for sig in before} == before  # the handlers are put back


def test_the_three_bench_loops_train_on_the_same_batches_with_the_same_epoch_length(tmp_path, mnist_root):
    """A translit step's cost depends on its words' lengths (180-260 ms for batches of the same size): the loops
    must see the same batches in every window, and epochs of the same length so their epoch ends line up."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench

    cfg = load_config({"name": "t", "model": {"name": "translit_rnn", "emb": 8, "hidden": 8},
                       "data": {"name": "arabizi", "valid": None, "val_size": 20, "limit": 100, "word_list": None},
                       "train": {"batch_size": 16, "device": "cpu", "seed": 3}})
    cpu = torch.device("cpu")
    loops = [bench.ZooLoop(cfg, tmp_path / "z"), bench.MinimalLoop(cfg, cpu), bench.DataLoaderLoop(cfg, cpu)]
    seen: dict[str, list] = {lp.name: [] for lp in loops}

    def spy(name, step):
        return lambda batch: seen[name].append(batch[0].clone()) or step(batch)

    loops[0].tr.train_step = spy("zoo", loops[0].tr.train_step)
    for lp in loops[1:]:
        lp.one_step = spy(lp.name, lp.one_step)
    for lp in loops:
        lp.run(9)  # an epoch is 5 batches of 16 of the 80 training words: this crosses into the second
    loops[0].close()
    assert len(seen["zoo"]) == 9 and not torch.equal(seen["zoo"][0], seen["zoo"][5])  # not the same batch twice
    for other in ("minimal", "dataloader"):
        assert all(torch.equal(a, b) for a, b in zip(seen["zoo"], seen[other], strict=True)), other
    # the same update as zoo's for the eager limit; torch's default, as pytorch/examples build it, for the DataLoader
    updates = [lp.tr.optimizers["main"] if lp.name == "zoo" else lp.optimizers["main"] for lp in loops]
    assert [u.param_groups[0]["foreach"] for u in updates] == [True, True, None]

    mnist = bench.DataLoaderLoop(lenet_config(mnist_root), cpu)  # torchvision's 60k images, a 256-image split
    assert mnist.data.size("train") == 256 and len(mnist.loader) == 256 // 32


def test_a_compiled_step_with_a_gradient_penalty_is_refused_in_one_line(tmp_path):
    cfg = load_config({"name": "c", "model": {"name": "gan1d", "width": 8, "depth": 1, "r1": 1.0},
                       "data": {"name": "triangle1d", "n": 2000},
                       "train": {"epochs": 1, "batch_size": 1000, "device": "cpu", "compile": "default",
                                 "best_metric": "none"}})
    with pytest.raises(ConfigError, match="train.compile=default cannot run this model's training step"):
        fit(cfg, tmp_path / "r")  # R1 differentiates D's gradient: double backward, which compiled steps lack
    assert not (tmp_path / "r").exists()  # a config error in the first epoch leaves no run dir
