"""torchrun data parallelism on the CPU (gloo): the same step as one process on the whole batch, exact resume
across a stop, rank 0 alone writing, and rule-based models refused with a clear message."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import communicate_all, stop
from zoo import checkpoint as ckpt_io
from zoo.config import load_config
from zoo.trainer import fit

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")

LENET = ["data.limit=512", "data.val_size=200", "train.device=cpu", "train.log_every=1", "train.seed=5",
         "model.conv1=8", "model.conv2=8", "model.hidden=32"]


def _cmd(config, args, nproc=2):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "zoo", "train", config, *args, "--quiet"]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def torchrun(tmp_path, config, *args, nproc=2):
    return subprocess.run(_cmd(config, args, nproc), cwd=tmp_path, env=ENV, capture_output=True, text=True,
                          timeout=300)


def model_state(run):
    return ckpt_io.load(run / "checkpoints" / "last.pt")["model"]


def test_two_processes_take_the_step_of_one_process_on_both_shards(mnist_root, tmp_path):
    """Rank r trains on order[r::2]; with the gradients averaged, 2 × batch 8 is one batch of 16."""
    cfg = os.path.abspath("configs/lenet.yaml")
    plain = ["model.dropout=0", "model.shift=0", "train.max_steps=4", "train.optimizer.name=sgd",
             "train.optimizer.lr=0.1", "train.optimizer.momentum=0.9", "train.scheduler.name=none"]
    r = torchrun(tmp_path, cfg, *LENET, *plain, "train.batch_size=8", f"data.root={os.path.abspath(mnist_root)}",
                 "--run-dir", "ddp")
    assert r.returncode == 0, r.stderr[-2000:]
    one = fit(load_config(cfg, [*LENET, *plain, "train.batch_size=16", f"data.root={os.path.abspath(mnist_root)}"]),
              tmp_path / "one")
    ddp = model_state(tmp_path / "ddp")
    for k, v in one.model.state_dict().items():
        torch.testing.assert_close(ddp[k], v, rtol=1e-5, atol=1e-6, msg=k)
    start = fit(load_config(cfg, [*LENET, *plain, "train.max_steps=1", "train.optimizer.lr=0", "train.batch_size=16",
                                  f"data.root={os.path.abspath(mnist_root)}"]), tmp_path / "start")
    moved = max((ddp[k] - v).abs().max().item() for k, v in start.model.state_dict().items() if v.is_floating_point())
    assert moved > 1e-3  # four SGD steps really moved the weights, and both runs agree on where to
    # logged numbers are averaged over the ranks: each step's loss is that of the whole 16-image batch
    ddp_hist = json.loads((tmp_path / "ddp" / "metrics.json").read_text())["history"]
    assert [h["step"] for h in ddp_hist] == [1, 2, 3, 4]
    for a, b in zip(ddp_hist, one.metrics["history"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_shards_are_every_world_th_index_cut_to_one_length():
    """5 indices over 2 ranks: 5 // 2 = 2 each, so both ranks run the same number of steps (a rank with a step
    more would wait forever in its all-reduce); the leftover index 4 sits out this epoch."""
    from zoo.distributed import Dist

    order = torch.arange(5)
    assert [Dist(rank, 2).shard(order).tolist() for rank in (0, 1)] == [[0, 2], [1, 3]]
    assert torch.equal(Dist().shard(order), order)  # one process: the whole permutation


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_with_a_c10d_rendezvous_take_the_step_of_one_process(mnist_root, tmp_path):
    """The multi-node form on one machine: two torchrun agents (one per "node") meet at a c10d rendezvous on
    127.0.0.1; with one process each and batch 8, they end on the weights of one process with batch 16."""
    cfg = os.path.abspath("configs/lenet.yaml")
    plain = [*LENET, "model.dropout=0", "model.shift=0", "train.max_steps=3", "train.optimizer.name=sgd",
             "train.optimizer.lr=0.1", "train.scheduler.name=none", f"data.root={os.path.abspath(mnist_root)}"]
    port = free_port()
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", f"--node_rank={rank}",
         "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=zoo-multinode-test",
         "-m", "zoo", "train", cfg, *plain, "train.batch_size=8", "--run-dir", "nodes", "--quiet"],
        cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = communicate_all(nodes, timeout=300)
    assert all(node.returncode == 0 for node in nodes), [err[-1500:] for _, err in outputs]
    one = fit(load_config(cfg, [*plain, "train.batch_size=16"]), tmp_path / "one")
    two = model_state(tmp_path / "nodes")
    for k, v in one.model.state_dict().items():
        torch.testing.assert_close(two[k], v, rtol=1e-5, atol=1e-6, msg=k)
    # global rank 0 alone wrote the run and reported it: one TensorBoard file, one status line
    assert len(list((tmp_path / "nodes").glob("events.out.tfevents.*"))) == 1
    assert json.loads((tmp_path / "nodes" / "metrics.json").read_text())["step"] == 3
    assert sum(out.count("stopped:") for out, _ in outputs) == 1


def _worker_of_rank(launcher_pid: int, rank: int) -> int:
    for child in Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text().split():
        env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in env:
            return int(child)
    raise LookupError(f"no worker of rank {rank} under {launcher_pid}")


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to find the worker processes")
def test_sigterm_to_one_rank_stops_all_after_the_same_batch(mnist_root, tmp_path):
    """Only rank 1 gets the signal: the ranks agree to stop, rank 0 saves a last.pt that resumes exactly,
    dropout and random shifts included: they draw from each rank's own stream, and last.pt carries all of them."""
    cfg = os.path.abspath("configs/lenet.yaml")
    args = [*LENET, "data.limit=16000", "train.epochs=1", "train.batch_size=16", "train.log_every=0",
            f"data.root={os.path.abspath(mnist_root)}"]
    proc = subprocess.Popen(_cmd(cfg, [*args, "--run-dir", "part"]), cwd=tmp_path, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not list((tmp_path / "part").glob("events.out.tfevents.*")):  # rank 0 is in its training loop
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
            time.sleep(0.1)
        os.kill(_worker_of_rank(proc.pid, 1), signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        stop([proc])
    assert "interrupted: part" in out, err[-2000:]
    ck = ckpt_io.load(tmp_path / "part" / "checkpoints" / "last.pt")
    assert 0 < ck["step"] < 500 and len(ck["rank_rng"]) == 2  # 16000 images / 2 ranks / 16 = 500 steps
    assert ck["batch_in_epoch"] == ck["step"]  # stopped after a whole batch, mid-epoch
    assert not torch.equal(ck["rank_rng"][0]["rng"]["torch"], ck["rank_rng"][1]["rng"]["torch"])
    assert json.loads((tmp_path / "part" / "metrics.json").read_text())["status"] == "interrupted"
    resumed = torchrun(tmp_path, cfg, *args, "--resume", "part")
    full = torchrun(tmp_path, cfg, *args, "--run-dir", "full")
    assert resumed.returncode == 0 and full.returncode == 0, resumed.stderr[-1000:] + full.stderr[-1000:]
    a, b = model_state(tmp_path / "full"), model_state(tmp_path / "part")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # rank 0 alone wrote the run: one TensorBoard file per launch, one status line per launch
    assert len(list((tmp_path / "full").glob("events.out.tfevents.*"))) == 1
    assert full.stdout.count("finished:") == 1 and resumed.stdout.count("finished:") == 1


def test_rule_based_model_is_refused_with_one_clear_line(mnist_root, tmp_path):
    r = torchrun(tmp_path, os.path.abspath("configs/competitive.yaml"), "data.limit=200", "train.device=cpu",
                 f"data.root={os.path.abspath(mnist_root)}")
    assert r.returncode != 0
    # every process meets the same bad input; the machine's local rank 0 alone says it
    assert r.stderr.count("error: model 'competitive' updates by a rule, not by gradients") == 1, r.stderr
    assert not list(tmp_path.rglob("last.pt"))
