from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.config import DataConfig, SyntheticRatingsConfig
from orchestrator.errors import DataValidationError
from pipelines.datasets import (
    load_movielens,
    load_parquet,
    load_rows,
    split_rows,
    synthetic_ratings,
    synthetic_tabular,
    validate_rows,
)

UDATA = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n"
INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + UDATA


@pytest.mark.parametrize("content", [UDATA, INTER], ids=["grouplens-u.data", "recbole-inter"])
def test_reads_both_movielens_layouts(tmp_path, content):
    path = tmp_path / "ratings"
    path.write_text(content)
    table = load_movielens(path)
    assert table.column("subject_id").to_pylist() == ["196", "186", "22"]
    assert table.column("item_id").to_pylist() == [242, 302, 377]
    assert table.column("rating").to_pylist() == [3.0, 3.0, 1.0]
    assert len(set(table.column("record_id").to_pylist())) == 3


def test_missing_file_is_a_typed_error(tmp_path):
    with pytest.raises(DataValidationError, match="does not exist"):
        load_movielens(tmp_path / "nope.data")
    with pytest.raises(DataValidationError, match="does not exist"):
        load_parquet(tmp_path / "nope.parquet")


def test_every_problem_is_listed_at_once():
    table = pa.table({"record_id": ["a", "a", "b"], "subject_id": ["x", None, "y"], "item_id": [1, 2, 3]})
    with pytest.raises(DataValidationError) as caught:
        validate_rows(table, "inline rows")
    problems = caught.value.problems
    assert any("missing column" in p and "rating" in p for p in problems)
    assert any("duplicate record_id" in p and "'a'" in p for p in problems)
    assert any("null subject_id" in p for p in problems)
    assert "3 problem(s) in inline rows" in str(caught.value)


def test_parquet_with_column_mapping(tmp_path):
    path = tmp_path / "ratings.parquet"
    pq.write_table(pa.table({"rid": [1, 2], "person": [10, 11], "movie": [3, 4], "stars": [4.0, 5.0]}), path)
    table = load_parquet(path, {"record_id": "rid", "subject_id": "person", "item_id": "movie", "rating": "stars"})
    assert table.column("record_id").to_pylist() == ["1", "2"]
    assert table.column("subject_id").to_pylist() == ["10", "11"]


def test_parquet_with_features_for_classification(tmp_path):
    path = tmp_path / "customers.parquet"
    pq.write_table(
        pa.table({"rid": ["r1", "r2"], "cid": ["c1", "c2"], "age": [30, 40], "spend": [1.5, 2.5], "label": [0, 1]}),
        path,
    )
    table = load_parquet(path, {"record_id": "rid", "subject_id": "cid"}, ("age", "spend"), task="classification")
    assert table.column("features").to_pylist() == [[30.0, 1.5], [40.0, 2.5]]


def test_parquet_mapping_to_absent_columns_lists_each(tmp_path):
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"a": [1]}), path)
    with pytest.raises(DataValidationError) as caught:
        load_parquet(path, {"record_id": "rid", "subject_id": "who"})
    assert len(caught.value.problems) == 2


def test_synthetic_data_is_deterministic_and_valid():
    config = SyntheticRatingsConfig(users=20, items=15, ratings_per_user=5, seed=4)
    first, second = synthetic_ratings(config), synthetic_ratings(config)
    assert first.equals(second)
    validate_rows(first, "synthetic")
    assert len(first) == 100
    assert set(first.column("rating").to_pylist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    validate_rows(synthetic_tabular(), "tabular", task="classification")


def test_split_is_seeded_and_disjoint():
    rows = synthetic_ratings(SyntheticRatingsConfig(users=30, items=20, ratings_per_user=10))
    train, test = split_rows(rows, 0.2, seed=1)
    again, _ = split_rows(rows, 0.2, seed=1)
    assert train.equals(again)
    assert len(train) + len(test) == len(rows)
    assert not set(train.column("record_id").to_pylist()) & set(test.column("record_id").to_pylist())


def test_load_rows_reads_a_config(tmp_path):
    path = tmp_path / "u.data"
    path.write_text(UDATA)
    train, test = load_rows(DataConfig(source="movielens", path=str(path)))
    assert len(train) == 3
    assert len(test) == 0
