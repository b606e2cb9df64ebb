"""The benchmark scripts the suite runs in a quick mode: bench_quality's whole path (collect,
train, evaluate, report) on a tiny dataset, its resumable runs file and its calibration
statistic; bench_gpu's clean exit without a GPU."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_quality", ROOT / "benchmarks" / "bench_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_spearman_ranks_with_ties_and_is_undefined_for_constant_sides(bench):
    assert bench.spearman(np.array([1.0, 2.0, 3.0]), np.array([10.0, 30.0, 20.0])) == pytest.approx(0.5)
    assert bench.spearman(np.array([1.0, 2.0, 3.0, 4.0]), np.array([5.0, 5.0, 6.0, 7.0])) == pytest.approx(
        np.corrcoef([1, 2, 3, 4], [1.5, 1.5, 3, 4])[0, 1])
    assert np.isnan(bench.spearman(np.array([1.0, 2.0]), np.array([500.0, 500.0])))
    assert np.isnan(bench.spearman(np.array([1.0]), np.array([2.0])))


def test_ways_of_acting_become_eval_overrides_and_behaviour_cloning_stays_greedy(bench):
    assert bench.acting_overrides("greedy") == ["eval.deterministic=true"]
    assert bench.acting_overrides("T0.5") == ["eval.deterministic=false", "eval.temperature=0.5", "eval.top_p=1"]
    assert bench.acting_overrides("T1p0.9") == ["eval.deterministic=false", "eval.temperature=1", "eval.top_p=0.9"]
    with pytest.raises(SystemExit, match="--acting top-p: expected greedy"):
        bench.acting_overrides("top-p")
    args = bench.parse_args(["--acting", "greedy", "T1p0.9"])
    assert bench.ways_of_acting("dt", args) == [["eval.deterministic=true"], bench.acting_overrides("T1p0.9")]
    assert bench.ways_of_acting("bc", args) == [[]]  # its method's overrides act greedily
    assert bench.ways_of_acting("dt", bench.parse_args([])) == [[]]  # the config's own way


@pytest.mark.slow
def test_quick_table_trains_each_method_once_evaluates_each_way_of_acting_and_reports(bench, ray_local, tmp_path):
    argv = ["model.policy=binned", "--quick", "--out", str(tmp_path), "--methods", "dt", "bc", "pi",
            "--acting", "greedy", "T1p0.9"]
    runs = bench.main(argv)
    # one training per method, evaluated once per way of acting (behaviour cloning only greedily)
    assert sorted(runs["method"] + " " + runs["acting"]) == [
        "bc greedy", "dt greedy", "dt sampled T 1 top-p 0.9", "pi greedy", "pi sampled T 1 top-p 0.9"]
    assert runs.groupby("method")["train_s"].nunique().eq(1).all()
    runs = runs[runs["acting"] == "greedy"]
    assert (runs["dataset"] == "pendulum-medium-expert").all() and (runs["steps"] == bench.QUICK["steps"]).all()
    for column in ("best_score", "best_return", "data_mean_score", "data_max_score", "train_s", "eval_s"):
        assert np.isfinite(runs[column].astype(float)).all(), column
    method = runs.set_index("method")
    assert len(json.loads(method.at["dt", "targets"])) == 5  # the auto targets; behaviour cloning needs one
    assert len(json.loads(method.at["bc", "targets"])) == 1
    assert len(json.loads(method.at["pi", "targets"])) == 5  # the auto temperatures
    # the path-integral model is also scored at the auto targets; the others have nothing there
    assert np.isfinite(method.at["pi", "auto_score"]) and method.loc[["dt", "bc"], "auto_score"].isna().all()

    saved = pd.read_csv(tmp_path / "quality_runs.csv")
    assert len(saved) == 5
    report = (tmp_path / "results.md").read_text()
    assert "| pendulum-medium-expert |" in report and "Budget: 40 training steps" in report
    assert (tmp_path / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    again = bench.main(argv)  # a rerun skips the runs it holds
    pd.testing.assert_frame_equal(again.reset_index(drop=True), saved, check_dtype=False)


def test_report_fills_the_markers_of_the_results_page_and_keeps_the_rest(bench, tmp_path):
    runs = pd.DataFrame([
        {"dataset": "cartpole-medium", "policy": "discrete", "acting": "greedy", "method": method, "seed": seed, "steps": 100,
         "episodes": 10, "best_score": score, "auto_score": 88.0 + seed if method == "pi" else np.nan,
         "spearman": 0.9, "data_mean_score": 50.0, "data_max_score": 100.0, "train_s": 10.0, "eval_s": 2.0}
        for method, scores in (("dt", (80.0, 90.0)), ("bc", (60.0, 70.0)), ("pi", (84.0, 86.0)))
        for seed, score in enumerate(scores)] + [
        {"dataset": "pendulum-medium", "policy": policy, "acting": how, "method": "dt", "seed": 0, "steps": 100,
         "episodes": episodes, "best_score": score,
         "spearman": 1.0, "data_mean_score": 50.0, "data_max_score": 90.0, "train_s": 10.0, "eval_s": 2.0}
        for policy, how, episodes, score in (("deterministic", "greedy", 10, 60.0), ("deterministic", "greedy", 50, 70.0),
                                             ("binned", "greedy", 10, 95.0), ("binned", "sampled T 0.5", 10, 80.0))])
    # a row per action head, way of acting and number of evaluation episodes
    doc = tmp_path / "results.md"
    doc.write_text(f"# Results\nprose\n{bench.TABLE_START}\nold table\n{bench.TABLE_END}\nmore prose\n")
    bench.write_report(runs, tmp_path, doc)
    text = doc.read_text()
    assert text.startswith("# Results\nprose\n") and text.endswith(f"{bench.TABLE_END}\nmore prose\n")
    assert "old table" not in text
    assert ("| cartpole-medium | discrete | greedy | 10 | 85.0 ± 7.1 | 65.0 ± 7.1 | 85.0 ± 1.4 | 88.5 ± 0.7 | 0.90 ± 0.00 | 0.90 ± 0.00 "
            "| 50.0 / 100.0 "
            "| 2/2/2 | 12 |") in text
    for row in ("| pendulum-medium | deterministic | greedy | 10 | 60.0 | – |",
                "| pendulum-medium | deterministic | greedy | 50 | 70.0 | – |",
                "| pendulum-medium | binned | greedy | 10 | 95.0 | – |", "| pendulum-medium | binned | sampled T 0.5 | 10 | 80.0 | – |"):
        assert row in text


def test_gpu_benchmark_skips_cleanly_without_a_gpu():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py")], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no CUDA device here, nothing to measure" in proc.stdout
