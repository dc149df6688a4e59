"""Configs and the CLI: strict validation before any data work, one-line errors with exit status 2."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from zoo import cli
from zoo.config import load_config, parse_overrides, resolve
from zoo.errors import ConfigError, ZooError
from zoo.registry import create_model, list_models, register_model

CONFIGS = sorted(Path(__file__).parents[1].joinpath("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_resolves(path):
    cfg = load_config(path)
    assert cfg["model"]["name"] in {m.name for m in list_models()}
    assert resolve(cfg) == cfg  # resolving is idempotent: the saved config.yaml loads to the same thing


BAD = [
    (["train.epochs=0"], "train.epochs"),
    (["train.epoch=2"], "did you mean 'epochs'"),
    (["train.batch_size=abc"], "train.batch_size"),
    (["train.optimizer.name=adamm"], "did you mean 'adam'"),
    (["train.device=gpu"], "train.device"),
    (["model.covariance=ful"], "did you mean 'full'"),
    (["model.latent_dimm=3"], "model.latent_dimm"),
    (["model.name=gausian_ae"], "did you mean 'gaussian_ae'"),
    (["data.limt=10"], "data.limt"),
    (["data.name=mnsit"], "did you mean 'mnist'"),
    (["trian.epochs=1"], "did you mean 'train'"),
    (["train.optimizer.betas=[0.9]"], "train.optimizer.betas"),
    (["train.epochs"], "key.sub=value"),
    (["data.limit=-5"], "data.limit"),
    (["train.epochs=null"], "'train.epochs' must be an integer, got null"),
    (["train.epochs="], "'train.epochs' must be an integer, got null"),
    (["train.optimizer.betas=null"], "train.optimizer.betas"),
    (["train.best_metric=null"], "train.best_metric"),
    (["model.latent_dim=null"], "'model.latent_dim' must be an integer, got null"),
    (["train.grad_clip=-1"], "train.grad_clip"),  # would flip every gradient
    (["data=[1]"], "'data' must be a mapping"),
    (["train.scheduler.name=step", "train.scheduler.step_size=0"], "train.scheduler.step_size"),  # 1 % 0 after
    (["train.scheduler.name=exponential", "train.scheduler.gamma=-0.5"], "train.scheduler.gamma"),  # an epoch
    (["train.scheduler.min_lr=-1"], "train.scheduler.min_lr"),  # a negative rate: gradient ascent
    (["train.optimizer.momentum=0.9"], "'train.optimizer.momentum' is for sgd"),  # adam ignored it
    (["train.optimizers={g: {momentum: 0.5}}"], "'train.optimizers.g.momentum' is for sgd"),
    (["train.optimizer.name=sgd", "train.optimizer.momentum=1.5"], "momentum' must be in"),  # diverges
    (["train.optimizer.momentum=1", "train.optimizer.name=sgd"], "momentum' must be in"),  # never forgets
    (["train.keep_last=0"], "'train.keep_last' must be positive"),  # no step-N.pt for --resume to fall back on
    (["train.scheduler.name=exponential", "train.scheduler.min_lr=0.01"], "cosine schedule only"),  # no floor
    (["train.seed=4294967296"], "'train.seed' must be an integer in [0, 4294967295]"),  # seed × 1,000,003 + epoch
    (["data.seed=20000000000000"], "'data.seed' must be an integer in [0, 4294967295]"),  # overflowed 64 bits
    (["data.bucket=4"], "data 'mnist' has items of one size, nothing to bucket by"),  # would sort nothing
    (["data.bucket=-1"], "data.bucket=-1 must be a whole number of batches"),
    (["data.bucket=many"], "'data.bucket' must be an integer"),
]


@pytest.mark.parametrize("overrides,needle", BAD, ids=[b[0][0] for b in BAD])
def test_config_errors_name_the_key(overrides, needle, tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_DATA", str(tmp_path / "nowhere"))  # proves no data is touched before the error
    monkeypatch.setattr("zoo.data.mnist.ensure_mnist", lambda *a, **k: pytest.fail("data loaded before validation"))
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[")):
        cfg = load_config("configs/vae.yaml", overrides)
        from zoo.trainer import Trainer  # values only a constructor can check surface here, still before data
        Trainer(cfg, tmp_path / "run", quiet=True)


def test_the_largest_seed_trains(tmp_path):
    from zoo.trainer import fit

    cfg = load_config("configs/gan1d.yaml", ["train.seed=4294967295", "data.seed=4294967295", "data.n=200",
                                             "train.epochs=2", "train.batch_size=100"])
    assert fit(cfg, tmp_path / "run").metrics["status"] == "finished"


def test_nullable_keys_accept_null_and_groups_type_check_against_the_schema():
    cfg = load_config("configs/vae.yaml", ["train.max_steps=null", "train.grad_clip=0", "data.limit=null",
                                           "train.optimizers=null"])
    assert (cfg["train"]["max_steps"], cfg["train"]["optimizers"], cfg["data"]["limit"]) == (None, {}, None)
    # an integer learning rate for the base optimizer; the GAN's groups keep their own float rates
    gan = load_config("configs/gan.yaml", ["train.optimizer.lr=0", "train.optimizer.weight_decay=0.5"])
    assert gan["train"]["optimizers"]["d"]["lr"] == 5e-4 and gan["train"]["optimizers"]["d"]["weight_decay"] == 0.5
    with pytest.raises(ConfigError, match="train.optimizers.d.lr"):
        load_config("configs/gan.yaml", ["train.optimizers.d.lr=null"])


def test_an_override_value_keeps_everything_after_the_first_equals_sign():
    assert parse_overrides(["data.root=/a=b", "name=x=="]) == [(["data", "root"], "/a=b"), (["name"], "x==")]


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv", [
    ["train", "configs/nope.yaml"],
    ["train", "configs/vae.yaml", "train.epochs=-1"],
    ["train", "configs/vae.yaml", "--resume", "runs/does-not-exist"],
    ["sample", "runs/does-not-exist"],
    ["eval", "runs/does-not-exist", "--json"],
    ["eval", "README.md"],
    ["sample", "README.md", "-n", "0"],
    ["list", "nothing-matches-*"],
    ["config", "show", "configs/vae.yaml", "model.covariance=5"],
    ["config", "show", "configs/vae.yaml", "model.latent_dim=-3", "--check"],  # a value the constructor refuses
    ["frobnicate"],
    ["train"],
    [],
    ["config"],
])
def test_bad_cli_input_exits_2_with_one_line(capsys, argv):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err


def test_bad_yaml_is_reported_with_its_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name: gaussian_ae\n train: [\n")
    code, _, err = run_cli(capsys, "config", "show", str(bad))
    assert code == 2 and "line" in err and "not valid YAML" in err


def test_config_show_prints_every_default(capsys):
    code, out, _ = run_cli(capsys, "config", "show", "configs/vae.yaml", "train.epochs=3", "model.latent_dim=16")
    cfg = yaml.safe_load(out)
    assert code == 0 and cfg["train"]["epochs"] == 3 and cfg["model"]["latent_dim"] == 16
    assert cfg["train"]["optimizer"]["weight_decay"] == 0.0 and cfg["model"]["init_std"] == 0.1  # not in the file
    # only the model's constructor knows latent_dim's range: --check builds it (and the data's declaration)
    assert run_cli(capsys, "config", "show", "configs/vae.yaml", "model.latent_dim=-3")[0] == 0
    code, out, _ = run_cli(capsys, "config", "show", "configs/vae.yaml", "model.latent_dim=5", "--check")
    assert code == 0 and yaml.safe_load(out)["model"]["latent_dim"] == 5


def test_list_with_wildcards(capsys):
    code, out, _ = run_cli(capsys, "list", "gauss*")
    assert code == 0 and out.split()[0] == "gaussian_ae"
    code, out, _ = run_cli(capsys, "list")
    assert len(out.strip().splitlines()) == len(list_models())


def test_list_shows_what_each_model_can_do(capsys):
    code, out, _ = run_cli(capsys, "list")
    can = {line.split()[0]: line.split()[3] for line in out.strip().splitlines()}  # name, family, config, can
    # the gan defines sample; the autoencoder sample and reconstruct; the classifier none of the commands' methods
    assert code == 0 and (can["gan"], can["gaussian_ae"], can["lenet"]) == ("sample", "sample,reconstruct", "-")
    assert can["translit_rnn"] == "translate"
    # name, family, config and capabilities are each padded to their column's width: every description starts
    # at the same offset
    infos = {i.name: i for i in list_models()}
    lines = out.rstrip("\n").splitlines()
    assert len({len(line) - len(infos[line.split()[0]].description) for line in lines}) == 1
    assert all(line.endswith(infos[line.split()[0]].description) for line in lines)


def test_registry_refuses_duplicates_and_suggests_names():
    with pytest.raises(ValueError, match="registered twice"):
        register_model("gaussian_ae", family="x", description="x")(object)
    with pytest.raises(ZooError, match="did you mean 'gaussian_ae'"):
        create_model("gaussian_aee")
    with pytest.raises(ConfigError, match="did you mean 'latent_dim'"):
        create_model("gaussian_ae", latent_dims=3)


@pytest.mark.parametrize("argv", [
    ["translit_options.py", "runs/no-such-run"],
    ["gan_ema_check.py", "runs/no-such-run"],
    ["collect_metrics.py", "runs/no-such-run", "--out", "{tmp}/metrics.json"],
    ["kill_resume.py", "configs/no-such.yaml"],
    ["bench.py", "configs/no-such.yaml"],
])
def test_scripts_end_bad_input_with_one_error_line_and_status_2(argv, tmp_path):
    """The measurement scripts answer a wrong run or config as `zoo` does: a line, status 2, no traceback."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(root / "scripts" / argv[0]), *(a.format(tmp=tmp_path) for a in argv[1:])]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=root)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "no-such" in lines[0]


@pytest.mark.parametrize("argv,needle", [
    (["bench.py", "--rounds", "0", "configs/linear_ae.yaml"], "--rounds: 0 must be above 0"),
    (["bench.py", "--window", "nan", "configs/linear_ae.yaml"], "--window: nan must be above 0"),
    (["bench_kmeans.py", "--threads", "0"], "--threads: 0 must be above 0"),
    (["bench_pair.py", "configs/purifier.yaml", "--rounds", "-1"], "--rounds: -1 must be above 0"),
    (["closed_forms.py", "--bogus"], "unrecognized arguments: --bogus"),
    (["translit_options.py", "{tmp}/lae"], "this script measures transliterator runs"),
    (["translit_options.py", "--lexicon-weights", "a,b", "{tmp}/lae"], "not a comma-separated list of numbers"),
    (["translit_options.py", "--checkpoint", "bogus", "{tmp}/lae"], "invalid choice: 'bogus'"),
    (["bench.py", "--run-seconds", "nan", "configs/linear_ae.yaml"], "--run-seconds: nan must be above 0"),
    # --out is checked before the work (hours of it for some), not when the results are written
    (["collect_metrics.py", "runs/x", "--out", "{tmp}"], "is a directory"),
    (["kill_resume.py", "configs/gan1d.yaml", "--out", "{tmp}"], "is a directory"),
    (["fid_scale.py", "--out", "README.md/fid.json"], "README.md is a file, not a folder"),
    (["gan1d_check.py", "--seeds", "-1"], "'--seeds' must be an integer in [0, 4294967295]"),
])
def test_scripts_refuse_meaningless_options_with_status_2(argv, needle, tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    if "{tmp}/lae" in argv[-1]:  # a run of another model (one epoch on two points)
        from zoo.trainer import fit

        fit(load_config({"model": {"name": "linear_ae", "k": 1}, "data": {"name": "homework", "problem": "hw6_q1a"},
                         "train": {"epochs": 1, "device": "cpu"}}), tmp_path / "lae")
    cmd = [sys.executable, str(root / "scripts" / argv[0]), *(a.format(tmp=tmp_path) for a in argv[1:])]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=root)
    assert done.returncode == 2 and needle in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA (with one, this runs the bench)")
def test_bench_on_cuda_without_one_names_its_own_flag():
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "scripts" / "bench.py"), "--device", "cuda",
                           "configs/linear_ae.yaml"], capture_output=True, text=True, timeout=120, cwd=root)
    assert done.returncode == 2 and done.stderr.startswith("error: --device is 'cuda'"), done.stderr


def test_bench_help_says_where_results_go():
    """--help shows only the docstring's first line, so --out's default must be spelt out in its own help."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "scripts" / "bench.py"), "--help"], capture_output=True,
                          text=True, timeout=120, cwd=root)
    text = " ".join(done.stdout.split())
    assert done.returncode == 0 and "see above" not in text
    assert all(p in text for p in ("bench/results.json", "bench/kmeans.json", "runs/bench/TIME.json")), text


def test_dry_run_trains_two_steps_through_the_epoch_end_and_keeps_no_run_dir(tmp_path, capsys, monkeypatch):
    import tempfile

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    cfg = tmp_path / "q.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "q", "model": {"name": "linear_ae", "k": 1, "tied": True, "center": True},
        "data": {"name": "homework", "problem": "hw6_q1a"},
        "train": {"epochs": 50, "batch_size": 1, "optimizer": {"name": "sgd", "lr": 0.01}, "device": "cpu"}}))
    seen = []
    real_end = __import__("zoo.trainer", fromlist=["Trainer"]).Trainer.end_epoch
    monkeypatch.setattr("zoo.trainer.Trainer.end_epoch", lambda self: (seen.append(self.step), real_end(self))[1])
    code, out, _ = run_cli(capsys, "train", str(cfg), "--dry-run", "-q")
    # 50 epochs of 1-item batches asked for; one epoch of 2 steps ran, its end too, and nothing is left behind
    assert code == 0 and seen == [2] and "dry run passed" in out and "2 training step(s)" in out
    assert not (tmp_path / "runs").exists() and not list((tmp_path / "tmp").glob("zoo-dry-run-*"))
    code, _, err = run_cli(capsys, "train", str(cfg), "--dry-run", "--resume", str(tmp_path))
    assert code == 2 and "drop --resume" in err


def test_under_torchrun_only_each_machines_local_rank_0_prints_bad_input(tmp_path, monkeypatch, capsys):
    missing = str(tmp_path / "nope.yaml")
    monkeypatch.setenv("LOCAL_RANK", "1")  # a variable some launchers leave behind: alone it silences nothing
    assert cli.main(["train", missing]) == 2 and "nope.yaml" in capsys.readouterr().err
    for key, value in {"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(key, value)  # torchrun's second process: rank 0 says it for the machine
    assert cli.main(["train", missing]) == 2 and capsys.readouterr().err == ""
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert cli.main(["train", missing]) == 2 and "nope.yaml" in capsys.readouterr().err


def test_a_half_set_or_mistyped_torchrun_environment_is_one_line(tmp_path, monkeypatch, capsys):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for env, needle in (({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' is not a process count"),
                        ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 but RANK, MASTER_ADDR, MASTER_PORT unset"),
                        ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"},
                         "RANK=2 is not below WORLD_SIZE")):
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        for argv in (["train", "configs/gan1d.yaml", "--run-dir", str(tmp_path / "run")],
                     ["train", "configs/gan1d.yaml", "--dry-run"]):
            assert cli.main(argv) == 2, (env, argv)
            err = capsys.readouterr().err.strip()
            assert needle in err and len(err.splitlines()) == 1, (env, err)
        assert not (tmp_path / "run").exists()


def test_usage_errors_are_one_line_and_help_works_on_every_call(capsys):
    for _ in range(2):  # the click command is built once (cli._click_command) and serves every call
        assert cli.main(["trian", "configs/vae.yaml"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "No such command 'trian'" in err and "'train'" in err, err
        assert cli.main(["train"]) == 2 and "Missing argument 'config'" in capsys.readouterr().err
        assert cli.main(["sample", "--bogus"]) == 2 and "No such option: --bogus" in capsys.readouterr().err
        assert cli.main(["--help"]) == 0 and "translit" in capsys.readouterr().out


@pytest.mark.parametrize("argv, needle", [
    (["translit", "runs/nope", "ahlan", "-t", "0.5", "--nbest", "2"], "--temperature"),  # sampling: one candidate
    (["export", "runs/nope", "-o", "x.safetensors", "--format", "onnx"], "--format"),  # before the run is read
    (["export", "runs/nope", "-o", "x.png"], ".safetensors"),
    (["eval", "runs/nope", "--checkpoint", "middle"], "--checkpoint"),
])
def test_option_checks_come_before_the_run_is_read(capsys, argv, needle):
    # runs/nope does not exist: a check done after loading the run would blame the path instead
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err

