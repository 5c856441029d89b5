from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from expunge.orchestrator.config import MFConfig, TrainingConfig
from expunge.orchestrator.training.work import ideal_speedup, monolith_ideal_speedup
from expunge.pipelines.benchmark import BenchmarkRow, _ints, _pairs, _table, main, run, with_monolith_baseline


def _row(shards: int, slices: int, train: float, phase: float, erasure: float, retrain: list[float]) -> BenchmarkRow:
    return BenchmarkRow(
        shards=shards,
        slices=slices,
        batch_size=512,
        train_seconds=train,
        train_phase_seconds=phase,
        test_rmse=1.0,
        erasure_seconds_median=erasure,
        erasure_seconds=[erasure],
        retrain_seconds=retrain,
        first_affected_slices=[0],
        speedup=1.0,
        ideal_speedup=1.0,
    )


def test_speedups_against_the_monolith_divide_its_times_by_the_erasure_times():
    monolith = _row(1, 1, train=30.0, phase=20.0, erasure=12.0, retrain=[10.0])
    sisa = _row(4, 4, train=40.0, phase=25.0, erasure=6.0, retrain=[2.0, 4.0, 9.0])
    unmeasured = _row(8, 8, train=40.0, phase=25.0, erasure=5.0, retrain=[])
    base, measured, missing = with_monolith_baseline([monolith, sisa, unmeasured], monolith)
    assert base.speedup_vs_monolith == pytest.approx(1.0)
    assert measured.speedup_vs_monolith == pytest.approx(10.0 / 4.0)  # monolith's full retrain over median retraining
    assert measured.end_to_end_vs_monolith == pytest.approx(12.0 / 6.0)  # whole erasure over whole erasure
    assert missing.speedup_vs_monolith == 0.0  # no retraining time: no figure rather than a division by zero
    no_erasure = _row(1, 1, train=30.0, phase=20.0, erasure=0.0, retrain=[])
    assert measured.cpu_speedup_vs_monolith == 0.0  # no CPU measured: no CPU figure
    (fallback,) = with_monolith_baseline([sisa], no_erasure)
    assert fallback.speedup_vs_monolith == pytest.approx(20.0 / 4.0)  # then its first training phase


def test_the_cpu_speedup_and_its_fraction_of_the_ideal_use_cpu_seconds():
    monolith = _row(1, 1, train=30.0, phase=20.0, erasure=12.0, retrain=[10.0]).model_copy(
        update={"retrain_cpu_seconds": [9.0]}
    )
    sisa = _row(8, 8, train=40.0, phase=25.0, erasure=6.0, retrain=[2.0]).model_copy(
        update={"retrain_cpu_seconds": [0.5, 1.0, 3.0], "ideal_speedup_vs_monolith": 12.0}
    )
    (measured,) = with_monolith_baseline([sisa], monolith)
    # Means of CPU seconds, as the ideal is the mean work of the same erasures (a median, 1.0 here,
    # would report 0.75 of the ideal for erasures that cost 1.5 on average).
    assert measured.cpu_speedup_vs_monolith == pytest.approx(9.0 / 1.5)
    assert measured.cpu_of_ideal == pytest.approx(6.0 / 12.0)


def test_the_monolith_cpu_baseline_is_the_median_of_its_retrains():
    # One slow draw of the machine (a retrain at 1.5x) must not move every row's cpu_of_ideal.
    monolith = _row(1, 1, train=30.0, phase=20.0, erasure=12.0, retrain=[10.0, 10.0, 10.0]).model_copy(
        update={"retrain_cpu_seconds": [9.0, 13.5, 9.2]}
    )
    sisa = _row(8, 8, train=40.0, phase=25.0, erasure=6.0, retrain=[2.0]).model_copy(
        update={"retrain_cpu_seconds": [1.0], "ideal_speedup_vs_monolith": 12.0}
    )
    (measured,) = with_monolith_baseline([sisa], monolith)
    assert measured.cpu_speedup_vs_monolith == pytest.approx(9.2)
    assert measured.cpu_of_ideal == pytest.approx(9.2 / 12.0)


@pytest.mark.integration
def test_benchmark_measures_every_configuration_on_grouplens_layout(tmp_path, ray_cluster, s3_bucket):
    lines = [f"{u}\t{i}\t{1 + (u * i) % 5}\t{880000000 + u * 100 + i}" for u in range(1, 31) for i in range(1, 13)]
    data = tmp_path / "u.data"
    data.write_text("\n".join(lines) + "\n")
    training = TrainingConfig(model=MFConfig(embedding_dim=4), epochs=2, batch_size=64, cpus_per_shard=0.25)
    results = run(data, [(1, 1), (2, 2)], training, erasures=2, s3_uri=f"s3://{s3_bucket}/bench", s3_grid=[(2, 2)])
    # E=2, R=2: SISA training work (1.5 row-epochs) differs from the monolith's (2), so the ideals differ.
    sisa = results[1]
    assert sisa.ideal_speedup == pytest.approx(ideal_speedup(2, 2, sisa.first_affected_slices))
    assert sisa.ideal_speedup_vs_monolith == pytest.approx(monolith_ideal_speedup(2, 2, 2, sisa.first_affected_slices))
    assert sisa.ideal_speedup != pytest.approx(sisa.ideal_speedup_vs_monolith)
    assert [(r.storage, r.shards, r.slices) for r in results] == [("local", 1, 1), ("local", 2, 2), ("s3", 2, 2)]
    assert len(results[0].erasure_seconds) == 3  # the monolith's erasure, a full retrain: 3 times for a median
    for row in results:
        assert row.batch_size == 64  # parity: every shard uses the monolith's batch
        assert len(row.erasure_seconds) == (3 if row.shards == 1 else 2)
        assert row.test_rmse > 0
        assert all(c > 0 for c in row.retrain_cpu_seconds)
        assert row.speedup > 0
        assert row.speedup_vs_monolith > 0
        assert row.ideal_speedup_vs_monolith >= 1.0
        assert row.storage_report is not None
        assert row.storage_report.bytes_per_row > 0


def test_list_options_are_repeatable_and_take_comma_lists():
    assert _pairs(["4x4,8x8"]) == _pairs(["4x4", "8X8"]) == [(4, 4), (8, 8)]
    assert _ints(["4,8"], "--shards") == _ints(["4", "8"], "--shards") == [4, 8]
    with pytest.raises(typer.BadParameter, match="--grid '4'"):
        _pairs(["4"])
    with pytest.raises(typer.BadParameter, match="--slices '0'"):
        _ints(["0"], "--slices")


def test_help_says_grid_not_config_and_does_not_point_to_itself():
    app = typer.Typer()
    app.command()(main)
    text = CliRunner().invoke(app, ["--help"], terminal_width=200).output
    assert "--grid" in text
    assert "--config" not in text  # README: --config is always a job YAML
    assert "Also `expunge benchmark erasure`" not in text


def test_table_says_what_each_speedup_divides():
    row = _row(4, 4, train=10.0, phase=8.0, erasure=1.0, retrain=[0.5])
    table = _table([row.model_copy(update={"ideal_speedup": 5.7, "ideal_speedup_vs_monolith": 7.3})])
    caption = str(table.caption)
    assert "the monolith's retrain / this erasure's retrain" in caption
    assert "ErasureReceipt.speedup" in caption
    assert "ideal_speedup (SISA work)" in caption
    cells = {str(c.header): c._cells[0] for c in table.columns}
    assert cells["vs full SISA | ideal"].endswith("| 5.7x")  # the SISA-work ideal, not the monolith's
    assert cells["vs monolith | ideal"].endswith("| 7.3x")
