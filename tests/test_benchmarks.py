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

from dtray.config import ActionSampling

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_quality", ROOT / "benchmarks" / "bench_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ways_of_acting_parse_before_ray_starts_and_behaviour_cloning_stays_greedy(bench):
    greedy, sampled = ActionSampling(), ActionSampling(False, 1.0, 0.9)
    config = bench.run_config("pendulum-medium", Path("d"), "dt", 0, bench.parse_args([]), way=(sampled,))
    assert config.eval.sampling == sampled
    with pytest.raises(SystemExit, match="way of acting 'top-p': expected greedy"):
        bench.parse_args(["--acting", "top-p"])
    args = bench.parse_args(["--acting", "greedy", "T1p0.9", "--choose-acting", "greedy", "T1p0.9"])
    assert bench.ways_of_acting("dt", args) == [(greedy,), (sampled,), (greedy, sampled)]
    assert bench.ways_of_acting("pi", args) == [(greedy,), (sampled,)]  # no targets to choose a way on
    assert bench.ways_of_acting("bc", args) == [()]  # its method's overrides act greedily
    assert bench.ways_of_acting("dt", bench.parse_args([])) == [()]  # the config's own way
    assert bench.acting(None, (greedy, sampled)) == "chosen of greedy, T1p0.9"


def test_an_unknown_dataset_name_is_a_usage_error_before_ray_starts(bench, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--datasets", "lunarlander"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'lunarlander'" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_table_trains_each_method_once_evaluates_each_way_of_acting_and_reports(bench, ray_local, tmp_path):
    argv = ["model.policy=binned", "--quick", "--out", str(tmp_path), "--methods", "dt", "bc", "pi",
            "--acting", "greedy", "--choose-acting", "greedy", "T1p0.9"]
    runs = bench.main(argv)
    # one training per method, evaluated once per way of acting (behaviour cloning only greedily),
    # and the DT once more, the way it chose on a held-out seed
    assert sorted(runs["method"] + " " + runs["acting"]) == [
        "bc greedy", "dt chosen of greedy, T1p0.9", "dt greedy", "pi greedy"]
    assert runs.groupby("method")["train_s"].nunique().eq(1).all()
    assert runs.set_index("acting").at["chosen of greedy, T1p0.9", "chosen"] in ("greedy", "T1p0.9")
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
    # ... and at those within the data's returns: the beyond-the-data target left out can only lower the best
    assert method.at["pi", "auto_score_in_data"] <= method.at["pi", "auto_score"]
    assert method.loc[["dt", "bc"], "auto_score_in_data"].isna().all()
    # the target slope needs targets: behaviour cloning has one, the path integral alphas
    assert np.isfinite(method.at["dt", "slope"]) and method.loc[["bc", "pi"], "slope"].isna().all()

    saved = pd.read_csv(tmp_path / "quality_runs.csv")
    assert len(saved) == 4
    report = (tmp_path / "results.md").read_text()
    assert "| pendulum-medium-expert |" in report and "Budget: 40 training steps" in report
    assert (tmp_path / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    again = bench.main(argv)  # a rerun skips the runs it holds
    pd.testing.assert_frame_equal(again.reset_index(drop=True), saved, check_dtype=False)


def test_report_fills_the_markers_of_the_results_page_and_keeps_the_rest(bench, tmp_path):
    runs = pd.DataFrame([
        {"dataset": "cartpole-medium", "policy": "discrete", "acting": "greedy", "method": method, "seed": seed, "steps": 100,
         "episodes": 10, "best_score": score, "auto_score": 88.0 + seed if method == "pi" else np.nan,
         "auto_score_in_data": 87.0 + seed if method == "pi" else np.nan,
         "spearman": 0.9, "slope": 0.5 + 0.1 * seed if method == "dt" else np.nan,
         "data_mean_score": 50.0, "data_max_score": 100.0, "train_s": 10.0, "eval_s": 2.0,
         # the path integral's alphas (hottest first) are each seed's own fractions of its return range
         "targets": json.dumps([10.0 + seed, 1.0 + 0.1 * seed]), "returns": json.dumps([3.0 + 2 * seed, 5.0 + 2 * seed])}
        for method, scores in (("dt", (80.0, 90.0)), ("bc", (60.0, 70.0)), ("pi", (84.0, 86.0)))
        for seed, score in enumerate(scores)] + [
        {"dataset": "pendulum-medium", "policy": policy, "acting": how, "method": "dt", "seed": 0, "steps": 100,
         "episodes": episodes, "best_score": score,
         "spearman": 1.0, "data_mean_score": 50.0, "data_max_score": 90.0, "train_s": 10.0, "eval_s": 2.0}
        for policy, how, episodes, score in (("deterministic", "greedy", 10, 60.0), ("deterministic", "greedy", 50, 70.0),
                                             ("binned", "greedy", 10, 95.0), ("binned", "sampled T 0.5", 10, 80.0))] + [
        {"dataset": "pendulum-medium", "policy": "binned", "acting": "chosen of greedy, T1", "chosen": way,
         "method": "dt", "seed": seed, "steps": 100, "episodes": 10, "best_score": 90.0, "spearman": 1.0,
         "data_mean_score": 50.0, "data_max_score": 90.0, "train_s": 10.0, "eval_s": 2.0}
        for seed, way in enumerate(("T1", "greedy"))])
    # a row per action head, way of acting and number of evaluation episodes
    doc = tmp_path / "results.md"
    doc.write_text(f"# Results\nprose\n{bench.TABLE_START}\nold table\n{bench.TABLE_END}\nmore prose\n")
    bench.write_report(runs, tmp_path, doc)
    text = doc.read_text()
    assert text.startswith("# Results\nprose\n") and text.endswith(f"{bench.TABLE_END}\nmore prose\n")
    assert "old table" not in text
    assert ("| cartpole-medium | discrete | greedy | 10 | 85.0 ± 7.1 | 65.0 ± 7.1 | 85.0 ± 1.4 | 88.5 ± 0.7 | 87.5 ± 0.7 | 0.90 ± 0.00 | 0.90 ± 0.00 "
            "| 0.55 ± 0.07 | 50.0 / 100.0 "
            "| 2/2/2 | 12 |") in text
    # the path integral's return per temperature, coldest first, seeds on the same grid averaged
    assert "| cartpole-medium | discrete | greedy | 100 | 10 | 2 | 1.05 / 10.5 | 6.000 ± 1.4 / 4.000 ± 1.4 | 1.00 |" in text
    for row in ("| pendulum-medium | deterministic | greedy | 10 | 60.0 | – |",
                "| pendulum-medium | deterministic | greedy | 50 | 70.0 | – |",
                "| pendulum-medium | binned | greedy | 10 | 95.0 | – |", "| pendulum-medium | binned | sampled T 0.5 | 10 | 80.0 | – |",
                "| pendulum-medium | binned | chosen of greedy, T1 (chose T1/greedy) | 10 | 90.0 ± 0.0 | – |"):
        assert row in text


def test_gpu_benchmark_skips_cleanly_without_a_gpu():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py")], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no CUDA device here, nothing to measure" in proc.stdout
