"""run_hyper: Ray Tune searches on a small real subset (tiny models, 1-3 epochs), space files."""
from __future__ import annotations

import csv
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml

from recbole_mmm4rec.cli import run_hyper_main
from recbole_mmm4rec.search_space import SearchSpaceError, load_search_space, ray_param_space
from recbole_mmm4rec.registry import PROPERTIES_DIR
from tests.conftest import SMALL_MMM4REC, SUBSET_NAME, subset_config_dict
from tests.test_cli import parse_table

BIN = os.path.dirname(sys.executable)
TINY_SASREC = {"hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 2}


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the in-process searches of this file (run_hyper reuses it)."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def write_files(tmp_path, data_path, space: str, space_name: str = "space.hyper", **overrides) -> tuple[str, str]:
    config_file = tmp_path / "fixed.yaml"
    config_file.write_text(yaml.safe_dump(subset_config_dict(data_path, tmp_path, **overrides)))
    space_file = tmp_path / space_name
    space_file.write_text(space)
    return str(config_file), str(space_file)


def read_rows(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def hyper_argv(model, config_file, space_file, tmp_path, *extra) -> list[str]:
    return [
        f"--model={model}", f"--dataset={SUBSET_NAME}", f"--config_files={config_file}",
        f"--params_file={space_file}", f"--storage_path={tmp_path / 'searches'}", "--name=search",
        "--cpus_per_trial=1", *extra,
    ]


def test_two_trial_search_writes_table_and_a_best_yaml_that_run_recbole_runs(
    local_ray, subset_data_path, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    # Relative paths on purpose: trials run in Ray's folders, the search makes them absolute.
    relative_data = os.path.relpath(subset_data_path, tmp_path)
    config_file, space_file = write_files(
        tmp_path, relative_data, "choice:\n  learning_rate: [0.001, 0.003]\n", "space.yaml", **SMALL_MMM4REC
    )
    argv = hyper_argv("MMM4Rec", "fixed.yaml", "space.yaml", tmp_path, "--algo=exhaustive", "--scheduler=fifo")
    assert run_hyper_main(argv) == 0
    printed = capsys.readouterr().out
    experiment = tmp_path / "searches" / "search"
    rows = read_rows(str(experiment / "results.csv"))
    assert sorted(float(r["learning_rate"]) for r in rows) == [0.001, 0.003]
    assert all(r["status"] == "completed" and r["evaluations"] == "1" and r["error"] == "" for r in rows)
    assert 0 < float(rows[0]["best valid ndcg@10"]) >= float(rows[1]["best valid ndcg@10"])
    assert rows[0]["trial"] in printed and "best valid ndcg@10" in printed

    best = yaml.safe_load((experiment / "best.yaml").read_text())
    assert best["model"] == "MMM4Rec" and best["dataset"] == SUBSET_NAME
    assert best["learning_rate"] == float(rows[0]["learning_rate"])
    assert best["data_path"] == subset_data_path and os.path.isabs(best["checkpoint_dir"])
    assert {k: best[k] for k in SMALL_MMM4REC} == SMALL_MMM4REC and best["modalities"] == ["text", "kg"]

    # The best configuration alone reproduces the best trial (same seed, one thread as in Ray).
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    rerun = subprocess.run(
        [os.path.join(BIN, "run_recbole"), f"--config_files={experiment / 'best.yaml'}"],
        capture_output=True, text=True, cwd=elsewhere, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    test_metrics = parse_table(rerun.stdout, f"MMM4Rec on {SUBSET_NAME}: test")
    assert test_metrics["ndcg@10"] == pytest.approx(float(rows[0]["test ndcg@10"]), abs=1e-4)

    # Resuming a finished search trains nothing and rebuilds the same table.
    trial_dirs = sorted(p.name for p in experiment.glob("trial_*"))
    assert run_hyper_main(argv + ["--resume"]) == 0
    assert sorted(p.name for p in experiment.glob("trial_*")) == trial_dirs
    assert read_rows(str(experiment / "results.csv")) == rows


def test_failing_trial_is_reported_and_the_search_goes_on(local_ray, subset_data_path, tmp_path, capsys):
    # hidden_size 15 is no multiple of SASRec's 2 heads: that trial raises in the model.
    config_file, space_file = write_files(
        tmp_path, subset_data_path, "hidden_size choice [15, 16]\n", **TINY_SASREC
    )
    assert run_hyper_main(hyper_argv("SASRec", config_file, space_file, tmp_path, "--algo=exhaustive")) == 0
    rows = {int(r["hidden_size"]): r for r in read_rows(str(tmp_path / "searches" / "search" / "results.csv"))}
    # One epoch of a 16-wide SASRec may rank no test item of the 120 users in its top 10: the
    # test metrics must be there and be metrics, not necessarily above zero.
    assert rows[16]["status"] == "completed" and 0 <= float(rows[16]["test ndcg@10"]) <= float(rows[16]["test hit@10"]) <= 1
    assert rows[15]["status"] == "error" and "not a multiple of the number of attention heads" in rows[15]["error"]
    assert "not a multiple" in capsys.readouterr().out
    assert yaml.safe_load((tmp_path / "searches" / "search" / "best.yaml").read_text())["hidden_size"] == 16


def test_asha_stops_a_clearly_worse_trial_early(local_ray, subset_data_path, tmp_path):
    # One trial at a time, the learning trial first: at the first rung the untrained one
    # (learning rate 0) is compared with it and stopped; the learning trial runs all 3 epochs.
    config_file, space_file = write_files(
        tmp_path, subset_data_path, "learning_rate choice [0.01, 0.0]\n", epochs=3, **TINY_SASREC
    )
    argv = hyper_argv(
        "SASRec", config_file, space_file, tmp_path, "--algo=exhaustive", "--scheduler=asha", "--grace_period=1",
        "--max_concurrent=1",
    )
    assert run_hyper_main(argv) == 0
    rows = {float(r["learning_rate"]): r for r in read_rows(str(tmp_path / "searches" / "search" / "results.csv"))}
    assert rows[0.01]["status"] == "completed" and rows[0.01]["evaluations"] == "3"
    assert rows[0.0]["status"] == "stopped early" and rows[0.0]["evaluations"] == "1"
    assert rows[0.0]["test ndcg@10"] == ""  # a stopped trial is never tested


def test_an_interrupted_search_resumes_where_it_stopped(local_ray, subset_data_path, tmp_path):
    config_file, space_file = write_files(
        tmp_path, subset_data_path, "learning_rate choice [0.001, 0.002, 0.003]\n", **TINY_SASREC
    )
    argv = hyper_argv("SASRec", config_file, space_file, tmp_path, "--algo=exhaustive", "--scheduler=fifo", "--max_concurrent=1")
    experiment = tmp_path / "searches" / "search"
    driver = subprocess.Popen(
        [os.path.join(BIN, "run_hyper"), *argv], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 300
    while not any('"completed": true' in p.read_text() for p in experiment.glob("trial_*/result.json")):
        assert driver.poll() is None and time.time() < deadline, "the first trial did not complete"
        time.sleep(0.5)
    driver.send_signal(signal.SIGINT)  # Ctrl+C: Ray Tune saves the search state and returns
    output = driver.communicate(timeout=120)[0]
    statuses = sorted(r["status"] for r in read_rows(str(experiment / "results.csv")))
    assert statuses[0] == "completed" and set(statuses[1:]) <= {"unfinished"}, output[-3000:]
    (first,) = [p for p in experiment.glob("trial_*/result.json") if '"completed": true' in p.read_text()]
    first_reports = first.read_text()

    assert run_hyper_main(argv + ["--resume"]) == 0
    rows = read_rows(str(experiment / "results.csv"))
    assert sorted(float(r["learning_rate"]) for r in rows) == [0.001, 0.002, 0.003]
    assert all(r["status"] == "completed" for r in rows)
    assert first.read_text() == first_reports  # the finished trial was not trained again


def test_searching_the_epochs_under_asha_is_refused(subset_data_path, tmp_path):
    config_file, space_file = write_files(tmp_path, subset_data_path, "epochs choice [1, 2]\n", **TINY_SASREC)
    with pytest.raises(SystemExit, match="searches epochs: ASHA counts its rungs in evaluations"):
        run_hyper_main(hyper_argv("SASRec", config_file, space_file, tmp_path))


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("a.hyper", "learning_rate loguniform -8,0\nhidden_size choice [64, 128\n", "a.hyper, line 2: the values of hidden_size must be a Python list literal"),
        ("b.hyper", "# comment\n\ndropout_prob uniform 0.1\n", "b.hyper, line 3: uniform for dropout_prob needs low,high"),
        ("c.hyper", "learning_rate gaussian 0,1\n", "c.hyper, line 1: unknown kind 'gaussian'"),
        ("d.hyper", "learning_rate\n", "d.hyper, line 1: expected 'name kind value'"),
        ("e.hyper", "lr uniform 0.5,0.1\n", "e.hyper, line 1: uniform for lr needs low < high"),
        ("f.hyper", "lr uniform 0.1,0.5\nlr choice [1]\n", "f.hyper, line 2: lr is already searched on line 1"),
        ("g.yaml", "choice:\n  fusion: [static\nuniform: {}\n", "g.yaml, line 3: not valid YAML"),
        ("h.yaml", "choice:\n  n_layers: [1, 2]\nuniform:\n  dropout_prob: 0.5\n", "h.yaml, line 4: dropout_prob needs a list (bounds)"),
        ("i.yaml", "normal:\n  lr: [0, 1]\n", "i.yaml, line 2: unknown kind 'normal'"),
        ("j.yaml", "", "j.yaml: names no parameter"),
    ],
)
def test_space_file_errors_name_the_file_and_line(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(SearchSpaceError) as raised:
        load_search_space(str(tmp_path / name))
    assert str(tmp_path / name) in str(raised.value) and message in str(raised.value)


def test_shipped_spaces_parse_and_the_two_formats_agree():
    hyper_dir = os.path.join(PROPERTIES_DIR, "hyper")
    spaces = {name: load_search_space(os.path.join(hyper_dir, name)) for name in sorted(os.listdir(hyper_dir))}
    assert {"MMM4Rec.hyper", "MMM4Rec.yaml", "SASRec.hyper", "UniSRec.hyper"} <= set(spaces)
    as_set = lambda space: {(p.name, p.kind, p.values) for p in space}  # noqa: E731
    assert as_set(spaces["MMM4Rec.hyper"]) == as_set(spaces["MMM4Rec.yaml"])


def test_ray_domains_follow_recbole_meanings(tmp_path):
    (tmp_path / "s.hyper").write_text(
        "learning_rate loguniform -9.21,-4.61\nn_layers quniform 1,3,1\nscale quniform 0.5,1.5,0.25\n"
        "fusion choice ['static', 'dynamic_shared']\n"
    )
    space = ray_param_space(load_search_space(str(tmp_path / "s.hyper")))
    for _ in range(50):
        assert 1e-4 * 0.999 <= space["learning_rate"].sample() <= 1e-2 * 1.001  # natural-log bounds
        layers = space["n_layers"].sample()
        assert isinstance(layers, int) and 1 <= layers <= 3
        steps = space["scale"].sample() / 0.25
        assert math.isclose(steps, round(steps)) and 2 <= steps <= 6
        assert space["fusion"].sample() in ("static", "dynamic_shared")
    grid = ray_param_space(load_search_space(str(tmp_path / "s.hyper")), exhaustive=True)
    assert grid["fusion"] == {"grid_search": ["static", "dynamic_shared"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    """A one-CPU Ray head node on 127.0.0.1 in its own process group and temp dir; stopped by
    signalling that group only (``ray stop`` would stop every Ray of this user)."""
    import tempfile

    temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths are limited
    port = free_port()
    head = subprocess.Popen(
        [
            os.path.join(BIN, "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
            "--num-cpus=1", "--num-gpus=0", "--include-dashboard=false", f"--temp-dir={temp_dir}",
            f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}", f"--metrics-export-port={free_port()}",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while subprocess.run(
            [os.path.join(BIN, "ray"), "status", f"--address={address}"], capture_output=True
        ).returncode != 0:
            assert head.poll() is None and time.time() < deadline, "the Ray head did not start"
            time.sleep(1)
        yield address, temp_dir
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_address_runs_the_search_on_a_running_head_node(ray_head, subset_data_path, tmp_path):
    address, head_temp_dir = ray_head
    config_file, space_file = write_files(tmp_path, subset_data_path, "learning_rate choice [0.001]\n", **TINY_SASREC)
    out = subprocess.run(
        [os.path.join(BIN, "run_hyper"), *hyper_argv("SASRec", config_file, space_file, tmp_path), f"--address={address}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    # Ray names the head by this machine's address; the port and the head's one CPU are ours.
    assert f":{address.split(':')[1]} (1 CPUs, 0 GPUs)" in out.stdout
    (row,) = read_rows(str(tmp_path / "searches" / "search" / "results.csv"))
    assert row["status"] == "completed"
    # The trial ran in a worker of that head node: its logs are in the head's session folder.
    logs = os.path.join(head_temp_dir, "session_latest", "logs")
    assert any("train_trial" in open(os.path.join(logs, f), errors="replace").read()
               for f in os.listdir(logs) if f.startswith("worker-"))
