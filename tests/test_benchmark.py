"""run_benchmark: variant parsing, same split for every model, aggregation over seeds, reuse of
finished runs, failures reported without stopping the others."""
from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import OrderedDict

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import SMALL_MMM4REC, SUBSET_NAME, subset_config_dict
from recbole_mmm4rec.benchmark import (
    BenchmarkError,
    Variant,
    _first_config,
    add_pretrained,
    checkpoint_digest,
    compare,
    defaults_file,
    execute,
    markdown_table,
    parse_models,
    parse_seeds,
    peak_resident_bytes,
    plan,
    run_benchmark,
    summarize,
)
from recbole_mmm4rec.config import NEUTRAL_SETTINGS, plain_value, settings_hash


def test_models_parse_into_variants_with_command_line_values():
    variants = parse_models("MMM4Rec, MMM4Rec[use_item_id=False, topk=[10, 20]],SASRec[learning_rate=3e-4, learner=adam]")
    assert [v.label for v in variants] == ["MMM4Rec", "MMM4Rec[use_item_id=False, topk=[10, 20]]", "SASRec[learning_rate=3e-4, learner=adam]"]
    assert [v.model for v in variants] == ["MMM4Rec", "MMM4Rec", "SASRec"]
    assert variants[1].settings == (("use_item_id", False), ("topk", [10, 20]))
    assert variants[2].settings == (("learning_rate", 3e-4), ("learner", "adam"))
    policy = parse_models("MMM4Rec[missing_feature_policy={'text': 'zero', 'kg': 'mean'}, state='a,b']")[0]
    assert policy.settings == (("missing_feature_policy", {"text": "zero", "kg": "mean"}), ("state", "a,b"))


@pytest.mark.parametrize(
    "text, message",
    [
        ("MMM4Rec[use_item_id=False", "unclosed"),
        ("MMM4Rec]", "unbalanced"),
        ("MMM4Rec[a={1: 2]", "unbalanced"),
        ("MMM4Rec[a='x]", "closing quote ' missing"),
        ("SASRec,SASRec", "twice"),
        ("SASRec[dropout]", "key=value"),
        ("4Rec", "NAME"),
        (" , ", "empty"),
    ],
)
def test_bad_models_say_what_is_wrong(text, message):
    with pytest.raises(BenchmarkError, match=message):
        parse_models(text)


def test_pretrained_adds_a_fine_tuned_variant_after_its_model(tmp_path):
    checkpoint = tmp_path / "m.pth"
    checkpoint.write_bytes(b"x")
    variants = add_pretrained(parse_models("MMM4Rec,SASRec,UniSRec"), f"MMM4Rec={checkpoint}")
    assert [v.label for v in variants] == ["MMM4Rec", "MMM4Rec (pre-trained)", "SASRec", "UniSRec"]
    assert variants[1].pretrained == str(checkpoint) and variants[0].pretrained is None
    with pytest.raises(BenchmarkError, match="GRU4Rec"):
        add_pretrained(parse_models("MMM4Rec"), f"GRU4Rec={checkpoint}")
    with pytest.raises(BenchmarkError, match="does not exist"):
        add_pretrained(parse_models("MMM4Rec"), f"MMM4Rec={tmp_path / 'missing.pth'}")
    with pytest.raises(BenchmarkError, match="MODEL=checkpoint"):
        add_pretrained(parse_models("MMM4Rec"), str(checkpoint))
    # a label with settings names its own checkpoint
    labelled = add_pretrained(parse_models("MMM4Rec,MMM4Rec[use_item_id=False]"), f"MMM4Rec[use_item_id=False]={checkpoint}")
    assert [v.label for v in labelled] == ["MMM4Rec", "MMM4Rec[use_item_id=False]", "MMM4Rec[use_item_id=False] (pre-trained)"]
    assert labelled[2].scratch_label == "MMM4Rec[use_item_id=False]"


def test_a_checkpoint_is_named_by_its_weights_not_its_file_bytes(tmp_path):
    # torch.save writes a fresh serialisation id each time: equal weights, different bytes.
    weights = OrderedDict(w=torch.arange(6, dtype=torch.float32).reshape(2, 3), b=torch.tensor([True, False]))
    first, second, changed = tmp_path / "a.pth", tmp_path / "b.pth", tmp_path / "c.pth"
    torch.save({"state_dict": weights, "other_parameter": None}, first)
    torch.save({"other_parameter": None, "state_dict": OrderedDict(reversed(weights.items()))}, second)
    assert first.read_bytes() != second.read_bytes()
    assert checkpoint_digest(str(first)) == checkpoint_digest(str(second))
    torch.save(weights, tmp_path / "bare.pth")
    assert checkpoint_digest(str(tmp_path / "bare.pth")) == checkpoint_digest(str(first))
    nudged = OrderedDict(weights, w=weights["w"] + torch.finfo(torch.float32).eps * 8)
    torch.save({"state_dict": nudged}, changed)
    assert checkpoint_digest(str(changed)) != checkpoint_digest(str(first))
    reshaped = OrderedDict(weights, w=weights["w"].reshape(3, 2))
    torch.save({"state_dict": reshaped}, changed)
    assert checkpoint_digest(str(changed)) != checkpoint_digest(str(first))
    torch.save([1, 2], changed)
    with pytest.raises(BenchmarkError, match="expected a RecBole checkpoint"):
        checkpoint_digest(str(changed))


def test_seeds_are_a_count_from_the_config_seed_or_a_list():
    assert parse_seeds("3", 2020) == [2020, 2021, 2022]
    assert parse_seeds(2, 7) == [7, 8]
    assert parse_seeds("1,7,9", 2020) == [1, 7, 9]
    assert parse_seeds("7,", 2020) == parse_seeds([7], 2020) == [7]
    for bad in ("0", "three", "", ",", "1,1"):
        with pytest.raises(BenchmarkError, match="--seeds"):
            parse_seeds(bad, 2020)


def _run(label, seed, ndcg, model=None):
    return {
        "label": label, "model": model or label, "seed": seed, "best_epoch": 1, "best_valid_score": ndcg,
        "test_result": {"hit@10": 2 * ndcg, "ndcg@10": ndcg}, "seconds_per_epoch": 10.0, "peak_rss_bytes": 2**30,
        "parameters": 5, "parameters_total": 5, "split_fingerprint": "abc",
        "epoch_history": [{"epoch": 0, "elapsed_seconds": 10.0}, {"epoch": 1, "elapsed_seconds": 21.0}],
    }


def test_summary_is_mean_and_sample_std_and_compares_with_the_best_other_model():
    runs = [_run("A", s, v) for s, v in ((1, 0.10), (2, 0.12), (3, 0.11))]
    runs += [_run("A[x=1]", s, v, model="A") for s, v in ((1, 0.20), (2, 0.21), (3, 0.22))]
    runs += [_run("B", s, v) for s, v in ((1, 0.05), (2, 0.06), (3, 0.04))]
    runs.append({"label": "B", "model": "B", "seed": 4, "error": "RuntimeError: boom\ntrace"})
    runs += [_run("C", s, 0.0) for s in (1, 2)]
    variants = [Variant("A", "A"), Variant("A[x=1]", "A", (("x", 1),)), Variant("B", "B"), Variant("C", "C")]
    summary = summarize(variants, runs)
    compare(summary, "test_ndcg@10")
    a, a_variant, b, c = summary
    assert a["test_ndcg@10"] == pytest.approx((0.11, statistics.stdev([0.10, 0.12, 0.11])))
    assert a["epochs_to_best"] == (2.0, 0.0) and a["seconds_to_best"] == (21.0, 0.0)
    assert b["seeds"] == [1, 2, 3] and b["errors"] == ["seed 4: RuntimeError: boom"]
    # a variant of the same model is never its "other": A is compared with B, B with A[x=1]
    assert a["best_other"] == "B" and a["ratio_to_best_other"] == pytest.approx(0.11 / 0.05)
    assert b["best_other"] == "A[x=1]"
    from scipy import stats

    expected = stats.ttest_ind([0.05, 0.06, 0.04], [0.20, 0.21, 0.22], equal_var=False).pvalue
    assert b["p_value_to_best_other"] == pytest.approx(expected)
    assert c["ratio_to_best_other"] == 0.0  # a zero-scoring model is a row, not a crash
    assert "ratio_to_scratch" not in a


def test_a_pre_trained_row_is_compared_with_its_from_scratch_row():
    runs = [_run("M", s, v) for s, v in ((1, 0.10), (2, 0.12))]
    runs += [dict(_run("M (pre-trained)", s, v, model="M"), best_epoch=0) for s, v in ((1, 0.13), (2, 0.14))]
    runs += [_run("B", s, v) for s, v in ((1, 0.5), (2, 0.4))]
    variants = [Variant("M", "M"), Variant("M (pre-trained)", "M", pretrained="x.pth", scratch_label="M"), Variant("B", "B")]
    summary = summarize(variants, runs)
    compare(summary, "test_ndcg@10")
    tuned = summary[1]
    assert tuned["ratio_to_scratch"] == pytest.approx(0.135 / 0.11)
    assert tuned["epochs_to_best_ratio_to_scratch"] == pytest.approx(0.5)
    table = markdown_table(summary, ["NDCG@10"], "NDCG@10")
    assert "vs from scratch" in table.splitlines()[0]
    assert f"{0.135 / 0.11:.3f}x (p=" in table and "0.50x" in table


def _send_then_die(job, sender):
    sender.send(("epoch", {"epoch": 0, "valid_score": 0.1}))
    os.kill(os.getpid(), signal.SIGKILL)


def _exit_silently(job, sender):
    os._exit(0)


def _report_peak(job, sender):
    sender.send(("done", {"peak": peak_resident_bytes()}))


def _fail(job, sender):
    sender.send(("failed", "ValueError: bad setting"))


def test_killed_and_silent_runs_are_reported_and_the_others_finish():
    kept, outcomes = {}, {}
    for key, worker in (("killed", _send_then_die), ("silent", _exit_silently), ("failed", _fail), ("fine", _report_peak)):
        job = {"key": key, "label": key, "seed": 1}
        outcomes.update(execute([job], workers=1, progress=False, on_outcome=kept.__setitem__, worker=worker))
    assert "killed by signal 9" in outcomes["killed"]["error"]
    assert "exit code 0" in outcomes["silent"]["error"]
    assert outcomes["failed"] == {"error": "ValueError: bad setting"} and "peak" in outcomes["fine"]
    # on_outcome hears of every reported outcome as it arrives, never of the silent ones
    assert set(kept) == {"failed", "fine"}


def _write_pid_and_sleep(job, sender):
    with open(job["pid_file"] + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(job["pid_file"] + ".tmp", job["pid_file"])
    time.sleep(600)


def test_a_terminated_benchmark_stops_its_runs(tmp_path):
    pid_file = str(tmp_path / "run.pid")
    script = ("from recbole_mmm4rec.benchmark import execute; from tests.test_benchmark import _write_pid_and_sleep; "
              f"execute([{{'key': 'k', 'label': 'x', 'seed': 1, 'pid_file': {pid_file!r}}}], 1, False, worker=_write_pid_and_sleep)")
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=os.path.dirname(os.path.dirname(__file__)))
    deadline = time.monotonic() + 120
    while not os.path.exists(pid_file) and time.monotonic() < deadline:
        time.sleep(0.2)
    run_pid = int(open(pid_file).read())
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=60) == 128 + signal.SIGTERM
    with pytest.raises(ProcessLookupError):
        os.kill(run_pid, 0)  # the run was stopped and reaped, not left behind


def test_peak_memory_is_the_run_process_own():
    ballast = np.ones(1536 * 2**20 // 8)  # 1.5 GiB touched, then freed: the parent's peak only
    del ballast
    job = {"key": "k", "label": "x", "seed": 1}
    peak = execute([job], workers=1, progress=False, worker=_report_peak)["k"]["peak"]
    assert 2**20 < peak < 2**30


def test_shared_overrides_never_override_a_run_s_seed_or_its_own_settings(subset_data_path, tmp_path):
    from recbole_mmm4rec.config import parse_cmd_args

    config_file = tmp_path / "shared.yaml"
    config_file.write_text(json.dumps({**subset_config_dict(subset_data_path, tmp_path), "topk": [10, 20]}))
    files = [defaults_file(), str(config_file)]
    shared, _ = parse_cmd_args(["--seed=7", "--learning_rate=0.01"])
    variants = parse_models("SASRec,SASRec[learning_rate=0.002]")
    first = _first_config(variants, SUBSET_NAME, files, shared)
    assert first["topk"] == [10, 20] and first["metrics"] == ["Hit", "NDCG"]  # the file over the benchmark's defaults
    runs, jobs = plan(variants, first, parse_seeds("7,8", 0), files, shared, str(tmp_path), str(tmp_path / "runs"), 1)
    assert [(job["label"], job["config_dict"]["seed"], job["config_dict"]["learning_rate"]) for job in jobs] == [
        ("SASRec", 7, 0.01), ("SASRec[learning_rate=0.002]", 7, 0.002),
        ("SASRec", 8, 0.01), ("SASRec[learning_rate=0.002]", 8, 0.002)]
    assert len({job["key"] for job in jobs}) == 4
    # without a file setting topk, the benchmark's defaults apply
    assert _first_config(variants, SUBSET_NAME, [defaults_file()], {"data_path": subset_data_path})["topk"] == [10, 20, 50]


@pytest.fixture(scope="module")
def benchmark_run(subset_data_path, tmp_path_factory):
    """MMM4Rec (small) and SASRec, two seeds, one epoch; a variant that cannot be built; an
    unknown model."""
    tmp_path = tmp_path_factory.mktemp("benchmark")
    config = subset_config_dict(subset_data_path, tmp_path, **SMALL_MMM4REC)
    for key in ("checkpoint_dir", "show_progress", "metrics", "topk", "valid_metric"):
        config.pop(key)  # the benchmark's own: per-run folders, properties/benchmark.yaml
    config_file = tmp_path / "shared.yaml"
    config_file.write_text(json.dumps(config))  # JSON is YAML
    arguments = dict(
        dataset=SUBSET_NAME, models="MMM4Rec,SASRec,MMM4Rec[hidden_size=30],NoSuchModel", seeds=2,
        config_file_list=[str(config_file)], output_dir=str(tmp_path / "out"), runs_dir=str(tmp_path / "runs"),
        workers=2, threads_per_run=1, progress=False,
    )
    return run_benchmark(**arguments), arguments


def test_every_model_runs_on_the_same_split_and_failures_are_rows(benchmark_run):
    result, _ = benchmark_run
    done = [run for run in result.runs if "error" not in run]
    assert sorted((run["label"], run["seed"]) for run in done) == [
        ("MMM4Rec", 2020), ("MMM4Rec", 2021), ("SASRec", 2020), ("SASRec", 2021)]
    # RecBole's SequentialDataset and ours see the same interactions in the same order
    assert len({run["split_fingerprint"] for run in done}) == 1
    assert "did not share one split" not in result.table
    rows = {row["label"]: row for row in result.summary}
    assert "divisible" in rows["MMM4Rec[hidden_size=30]"]["errors"][0]
    assert "unknown model 'NoSuchModel'" in rows["NoSuchModel"]["errors"][0]
    for run in done:
        assert set(run["test_result"]) == {f"{m}@{k}" for m in ("hit", "ndcg") for k in (10, 20, 50)}
        assert run["peak_rss_bytes"] > 2**27 and run["parameters"] > 0 and run["epoch_history"]
    # seeds change the initialisation: the std is over different results
    mmm4rec = [run["test_result"]["ndcg@10"] for run in done if run["label"] == "MMM4Rec"]
    assert mmm4rec[0] != mmm4rec[1]
    mean, std = rows["MMM4Rec"]["test_ndcg@10"]
    assert mean == pytest.approx(np.mean(mmm4rec)) and std == pytest.approx(np.std(mmm4rec, ddof=1))
    assert f"{mean:.4f} ± {std:.4f}" in result.table
    assert "NoSuchModel | 0 |" in result.table


def test_outputs_are_written_and_plots_are_pngs(benchmark_run):
    result, _ = benchmark_run
    saved = json.load(open(os.path.join(result.output_dir, "results.json")))
    assert saved["seeds"] == [2020, 2021] and len(saved["runs"]) == 8
    assert open(os.path.join(result.output_dir, "results.md")).read().strip() == result.table
    for name in ("valid_curves.png", "quality_vs_time.png"):
        with open(os.path.join(result.output_dir, name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_a_rerun_reuses_finished_runs_and_retries_failed_ones(benchmark_run):
    first, arguments = benchmark_run
    # SASRec[epochs=1] has SASRec's settings (the shared file says epochs: 1): the same runs
    again = run_benchmark(**{**arguments, "models": "MMM4Rec,SASRec,MMM4Rec[hidden_size=30],SASRec[epochs=1]",
                             "output_dir": os.path.join(os.path.dirname(first.output_dir), "again")})
    done = [run for run in again.runs if "error" not in run]
    assert len(done) == 6 and all(run.get("reused") for run in done)
    before = {(r["label"], r["seed"]): r["test_result"] for r in first.runs if "error" not in r}
    after = {(r["label"], r["seed"]): r["test_result"] for r in done}
    assert after == {**before, **{("SASRec[epochs=1]", seed): before[("SASRec", seed)] for seed in (2020, 2021)}}
    assert [row["label"] for row in again.summary] == ["MMM4Rec", "SASRec", "MMM4Rec[hidden_size=30]", "SASRec[epochs=1]"]
    # --report_only trains nothing: a seed never run is shown as such
    report = run_benchmark(**{**arguments, "models": "SASRec", "seeds": 3, "report_only": True,
                              "output_dir": os.path.join(os.path.dirname(first.output_dir), "report")})
    assert [bool(run.get("reused")) for run in report.runs] == [True, True, False]
    assert report.summary[0]["seeds"] == [2020, 2021] and "not run yet: seed 2022" in report.table
    # the failing variant was tried again, and failed again
    assert len(again.summary[2]["errors"]) == 2
    # another setting is another run: nothing of the first is reused for it
    changed = run_benchmark(**{**arguments, "models": "SASRec", "seeds": [2020], "workers": 1,
                               "output_dir": os.path.join(os.path.dirname(first.output_dir), "changed")},
                            cmd_args=["--epochs=2"])
    assert not changed.runs[0].get("reused") and changed.runs[0]["epochs_trained"] == 2
    assert not math.isnan(changed.summary[0]["test_ndcg@10"][0])


def test_cli_reports_bad_arguments(tmp_path):
    from recbole_mmm4rec.cli import run_benchmark_main

    with pytest.raises(SystemExit, match="run_benchmark: --models: unclosed"):
        run_benchmark_main(["--dataset=ml-100k-mm", "--models=MMM4Rec[x=1", f"--output={tmp_path}"])


def test_an_option_at_its_neutral_value_leaves_a_run_s_name_unchanged():
    class Settings:
        def __init__(self, **values):
            self.final_config_dict = {"model": "SASRec", "learning_rate": 1e-3, **values}

    before_the_options_existed = settings_hash(Settings(), ())
    assert settings_hash(Settings(**NEUTRAL_SETTINGS), ()) == before_the_options_existed
    assert settings_hash(Settings(accumulation_steps=8), ()) != before_the_options_existed
    assert settings_hash(Settings(weight_decay_exempt=True), ()) != before_the_options_existed


def test_plain_value_makes_results_json_and_yaml_safe():
    # RecBole's results are OrderedDicts of numpy floats; Ray hands back numpy scalars, tuples.
    value = OrderedDict(
        [("ndcg@10", np.float32(0.25)), ("epochs", np.int64(3)), ("sizes", (np.int64(64), 2)), (7, torch.tensor(1.5))]
    )
    plain = plain_value(value)
    assert plain == {"ndcg@10": 0.25, "epochs": 3, "sizes": [64, 2], "7": 1.5}
    assert type(plain) is dict and type(plain["ndcg@10"]) is float and type(plain["sizes"][0]) is int
    assert json.loads(json.dumps(plain)) == plain
    assert yaml.safe_load(yaml.safe_dump(plain)) == plain
