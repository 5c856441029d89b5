from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from expunge.orchestrator.config import DataConfig, MFConfig, MLPConfig, SyntheticRatingsConfig
from expunge.orchestrator.errors import DataValidationError
from expunge.pipelines.datasets import (
    load_batch,
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
    assert any("duplicate record_id" in p and "rows 0 and 1" in p for p in problems)  # by position, not value
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
    mapped, unmapped = caught.value.problems[:2], caught.value.problems[2:]
    assert "'rid' (for record_id)" in mapped[0]
    assert "'who' (for subject_id)" in mapped[1]
    assert len(unmapped) == 1
    assert "missing column(s) ['item_id', 'rating']; found ['a']" in unmapped[0]


def test_parquet_unmapped_columns_are_named_not_an_empty_file(tmp_path):
    """Issue 22: a file whose columns are not mapped read as "holds no rows", as an empty file does."""
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"rid": ["a"], "uid": ["u"], "iid": [1], "r": [3.0]}), path)
    for load in (load_parquet, load_batch):
        with pytest.raises(DataValidationError) as caught:
            load(str(path))
        [problem] = caught.value.problems
        assert "holds no rows" not in problem
        assert "missing column(s) ['record_id', 'subject_id', 'item_id', 'rating']" in problem
        assert "found ['rid', 'uid', 'iid', 'r']" in problem
        assert "data.columns" in problem


def test_parquet_one_wrong_column_names_the_file_extra_column(tmp_path):
    """Issue 22: a missing rating column named the canonical ones found, not the file's `score`, and no fix."""
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"record_id": ["a"], "subject_id": ["u"], "item_id": [1], "score": [3.0]}), path)
    for load in (load_parquet, load_batch):
        with pytest.raises(DataValidationError) as caught:
            load(str(path))
        [problem] = caught.value.problems
        assert "missing column(s) ['rating']; found ['record_id', 'subject_id', 'item_id', 'score']" in problem
        assert "data.columns" in problem
        assert "rating: <file column>" in problem
    # Mapped, it reads.
    assert load_batch(str(path), DataConfig(columns={"rating": "score"})).column("rating").to_pylist() == [3.0]


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


# ----- loaders read what the file says ------------------------------------------------------

ML_DAT = "196::242::3::881250949\n186::302::3.5::891717742\n22::377::1::878887116\n"
ML_LATEST = "userId,movieId,rating,timestamp\n196,242,3.0,881250949\n186,302,3.5,891717742\n22,377,1.0,878887116\n"


@pytest.mark.parametrize(
    "content",
    [
        "item_id:token\tuser_id:token\trating:float\ttimestamp:float\n"
        "242\t196\t3\t881250949\n302\t186\t3.5\t891717742\n377\t22\t1\t878887116\n",
        "timestamp\trating\titem_id\tuser_id\n881250949\t3\t242\t196\n891717742\t3.5\t302\t186\n878887116\t1\t377\t22\n",
        ML_DAT,
        ML_LATEST,
        "\ufeff" + ML_LATEST.replace("\n", "\r\n"),
    ],
    ids=["inter-item-first", "inter-no-suffixes-reversed", "ml-1m-ratings.dat", "ml-latest-ratings.csv", "bom-crlf"],
)
def test_columns_are_read_by_what_the_file_says(tmp_path, content):
    path = tmp_path / "ratings"
    path.write_bytes(content.encode())
    table = load_movielens(path)
    assert table.column("subject_id").to_pylist() == ["196", "186", "22"]  # users, never items
    assert table.column("item_id").to_pylist() == [242, 302, 377]
    assert table.column("rating").to_pylist() == [3.0, 3.5, 1.0]
    assert table.column("record_id").to_pylist()[0] == "196:242:881250949"
    assert table.schema.field("rating").type == pa.float32()


def test_the_record_id_of_real_movielens_100k_is_stable():
    """Record ids keep their pre-existing form, so stores trained before stay consistent."""
    path = Path(__file__).resolve().parents[3] / "shared" / "data" / "ml-100k" / "ml-100k.inter"
    if not path.is_file():
        pytest.skip("MovieLens 100K is not available here")
    table = load_movielens(path)
    assert len(table) == 100_000
    assert table.column("record_id")[0].as_py() == "196:242:881250949"
    assert len(set(table.column("subject_id").to_pylist())) == 943


def test_subject_ids_are_the_text_in_the_file(tmp_path):
    path = tmp_path / "u.data"
    path.write_text("007\t1\t4\t10\n7\t2\t4\t11\n")
    assert load_movielens(path).column("subject_id").to_pylist() == ["007", "7"]  # two people


def test_a_header_without_timestamps_keys_records_by_user_and_item(tmp_path):
    path = tmp_path / "x.inter"
    path.write_text("user_id:token\titem_id:token\trating:float\nu1\t3\t4\nu1\t4\t5\n")
    assert load_movielens(path).column("record_id").to_pylist() == ["u1:3", "u1:4"]


@pytest.mark.parametrize(
    ("content", "found"),
    [
        ("196,242,3,881250949\n", "4 comma-separated field(s) and no header"),
        ("196\t242\t3\n", "3 tab-separated field(s) and no header"),
        ("user_id\tmovie\tstars\n1\t2\t3\n", "names no item or rating column"),
        ("alice@example.org\tx\ty\n", "3 tab-separated field(s) and no header"),
        ("1::2::3\n", "3 '::'-separated fields"),
        ("\n", "the first line is empty"),
    ],
)
def test_an_unknown_layout_names_the_layouts_understood(tmp_path, content, found):
    path = tmp_path / "ratings.txt"
    path.write_text(content)
    with pytest.raises(DataValidationError) as caught:
        load_movielens(path)
    message = str(caught.value)
    assert found in message
    for layout in ("u.data", "RecBole .inter", "ratings.dat", "ratings.csv"):
        assert layout in message
    assert "alice" not in message  # a data line is never echoed


def test_a_ratings_file_that_is_not_utf8_is_a_typed_error(tmp_path):
    path = tmp_path / "u.data"
    path.write_bytes(b"zo\xeb\t1\t4\t10\n")
    with pytest.raises(DataValidationError, match="UTF8"):
        load_movielens(path)


# ----- bad values are refused, all in one error ---------------------------------------------


def _ratings(**columns):
    base = {"record_id": ["r1", "r2", "r3", "r4"], "subject_id": ["a", "b", "c", "d"], "item_id": [0, 1, 2, 3]}
    base.update(columns)
    return pa.table(base)


def test_nan_infinite_and_out_of_range_ratings_are_refused():
    rows = _ratings(rating=[float("nan"), float("inf"), 0.0, 5.5])
    with pytest.raises(DataValidationError) as caught:
        validate_rows(rows, "inline rows")
    problems = caught.value.problems
    assert "1 rating value(s) are NaN, first at row 0" in problems
    assert "1 rating value(s) are infinite (+/-Inf), first at row 1" in problems
    assert any("2 rating value(s) are outside the rating range [0.5, 5]" in p for p in problems)


def test_half_star_and_whole_star_ratings_are_accepted():
    validate_rows(_ratings(rating=[0.5, 1.0, 4.5, 5.0]), "inline rows")
    validate_rows(_ratings(rating=pa.array([1, 2, 3, 5], pa.int8())), "inline rows")


def test_the_rating_range_can_be_given():
    validate_rows(_ratings(rating=[1.0, 7.0, 10.0, 2.0]), "inline rows", rating_range=(1.0, 10.0))


def test_numeric_columns_stored_as_text_are_refused(tmp_path):
    rows = _ratings(rating=["4", "4.5", "N/A", "3"], item_id=["1", "2", "3", "4"])
    with pytest.raises(DataValidationError) as caught:
        validate_rows(rows, "inline rows")
    assert "rating is stored as text (e.g. 'N/A' at row 2); store it as numbers" in caught.value.problems
    assert any("item_id is stored as text (every value is a number" in p for p in caught.value.problems)
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n1,2,4.5,10\n1,3,four,11\n")
    with pytest.raises(DataValidationError, match=r"rating is stored as text \(e.g. 'four' at row 1\)"):
        load_movielens(path)


def test_nan_in_a_ratings_file_is_refused_as_nan(tmp_path):
    path = tmp_path / "u.data"
    path.write_text("1\t2\tnan\t10\n1\t3\t4\t11\n2\t3\t\t12\n")
    with pytest.raises(DataValidationError) as caught:
        load_movielens(path)
    assert "1 rating value(s) are NaN, first at row 0" in caught.value.problems
    assert "1 row(s) have a null rating" in caught.value.problems


def test_float_item_ids_and_negative_items_are_refused():
    with pytest.raises(DataValidationError, match="item_id holds floating-point numbers"):
        validate_rows(_ratings(item_id=[1.0, 2.0, 3.0, 4.0], rating=[1, 2, 3, 4]), "inline rows")
    with pytest.raises(DataValidationError, match=r"1 item_id value\(s\) are outside >= 0"):
        validate_rows(_ratings(item_id=[1, -2, 3, 4], rating=[1, 2, 3, 4]), "inline rows")


def test_item_ids_beyond_a_configured_catalogue_are_refused():
    rows = _ratings(rating=[1, 2, 3, 4])
    with pytest.raises(DataValidationError, match=r"outside \[0, training.model.num_items=3\)"):
        validate_rows(rows, "inline rows", model=MFConfig(num_items=3))
    validate_rows(rows, "inline rows", model=MFConfig(num_items=4))


def _tabular(features, labels):
    return pa.table(
        {
            "record_id": [f"r{i}" for i in range(len(labels))],
            "subject_id": [f"p{i}" for i in range(len(labels))],
            "features": features,
            "label": labels,
        }
    )


def test_bad_labels_and_features_are_refused():
    features = pa.FixedSizeListArray.from_arrays(pa.array([0.1, float("nan"), 0.3, float("-inf"), 0.5, 0.6]), 2)
    rows = _tabular(features, [0, -1, 3])
    with pytest.raises(DataValidationError) as caught:
        validate_rows(rows, "inline rows", "classification", model=MLPConfig(num_features=3, num_classes=3))
    problems = caught.value.problems
    assert any("2 label value(s) are outside [0, training.model.num_classes=3)" in p for p in problems)
    assert "1 features value(s) are NaN, first at row 0" in problems
    assert "1 features value(s) are infinite (+/-Inf), first at row 1" in problems
    assert any("num_features=3" in p for p in problems)
    float_labels = _tabular(pa.FixedSizeListArray.from_arrays(pa.array([0.1, 0.2]), 2), [1.0])
    with pytest.raises(DataValidationError, match="label holds floating-point numbers"):
        validate_rows(float_labels, "inline rows", "classification")


def test_parquet_features_stored_as_text_or_null_are_refused(tmp_path):
    path = tmp_path / "customers.parquet"
    pq.write_table(
        pa.table(
            {"rid": ["r1", "r2"], "cid": ["c1", "c2"], "age": ["30", "40"], "spend": [1.5, None], "label": [0, 1]}
        ),
        path,
    )
    with pytest.raises(DataValidationError) as caught:
        load_parquet(path, {"record_id": "rid", "subject_id": "cid"}, ("age", "spend"), task="classification")
    assert caught.value.problems == (
        "feature column 'age' is stored as text; store it as numbers",
        "feature column 'spend' has 1 null value(s)",
    )


def test_a_floating_point_subject_column_is_refused_and_integers_become_text(tmp_path):
    path = tmp_path / "ratings.parquet"
    pq.write_table(pa.table({"rid": [1, 2], "person": [1001.0, 1002.0], "movie": [3, 4], "stars": [4.0, 5.0]}), path)
    mapping = {"record_id": "rid", "subject_id": "person", "item_id": "movie", "rating": "stars"}
    with pytest.raises(DataValidationError, match="subject_id is a floating-point column"):
        load_parquet(path, mapping)
    pq.write_table(pa.table({"rid": [1, 2], "person": [1001, 1002], "movie": [3, 4], "stars": [4.0, 5.0]}), path)
    assert load_parquet(path, mapping).column("subject_id").to_pylist() == ["1001", "1002"]


def test_subject_ids_in_data_follow_the_identity_rule():
    rows = validate_rows(_ratings(subject_id=["zoe\u0308", " b ", "c\t", "d"], rating=[1, 2, 3, 4]), "inline rows")
    assert rows.column("subject_id").to_pylist() == ["zo\u00eb", "b", "c", "d"]
    with pytest.raises(DataValidationError, match="2 row"):
        validate_rows(_ratings(subject_id=["a", "", " ", "d"], rating=[1, 2, 3, 4]), "inline rows")


# ----- a split that erasure cannot disturb --------------------------------------------------


def _record_ids(table):
    return table.column("record_id").to_pylist()


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_the_split_without_a_person_is_everyone_elses_split_unchanged(seed):
    rows = synthetic_ratings(SyntheticRatingsConfig(users=40, items=30, ratings_per_user=10, seed=seed))
    train, test = split_rows(rows, 0.25, seed)
    for person in ("user-0", "user-17", "user-39"):
        remaining = rows.filter(pc.not_equal(rows.column("subject_id"), person))
        train_without, test_without = split_rows(remaining, 0.25, seed)
        assert _record_ids(train_without) == [r for r in _record_ids(train) if not r.startswith(f"u{person[5:]}-")]
        assert _record_ids(test_without) == [r for r in _record_ids(test) if not r.startswith(f"u{person[5:]}-")]


def test_the_split_does_not_depend_on_row_order_or_neighbours():
    rows = synthetic_ratings(SyntheticRatingsConfig(users=30, items=20, ratings_per_user=10))
    _, test = split_rows(rows, 0.2, seed=3)
    _, shuffled_test = split_rows(rows.take(pa.array(list(reversed(range(len(rows)))))), 0.2, seed=3)
    assert set(_record_ids(test)) == set(_record_ids(shuffled_test))
    _, other_seed = split_rows(rows, 0.2, seed=4)
    assert set(_record_ids(test)) != set(_record_ids(other_seed))
    assert 0.1 < len(test) / len(rows) < 0.3


def test_training_from_a_file_without_a_person_keeps_everyone_elses_split(tmp_path):
    lines = [f"{u}\t{i}\t{1 + (u * i) % 5}\t{1000 + u * 100 + i}" for u in range(1, 30) for i in range(10)]
    full, cleaned = tmp_path / "full.data", tmp_path / "cleaned.data"
    full.write_text("\n".join(lines) + "\n")
    cleaned.write_text("\n".join(line for line in lines if not line.startswith("7\t")) + "\n")
    config = DataConfig(source="movielens", path=str(full), test_fraction=0.3, split_seed=5)
    train, test = load_rows(config)
    train_cleaned, test_cleaned = load_rows(config.model_copy(update={"path": str(cleaned)}))

    def others(table):
        return [r for r in _record_ids(table) if not r.startswith("7:")]

    assert _record_ids(train_cleaned) == others(train)
    assert _record_ids(test_cleaned) == others(test)
    assert len(test) > 0


def test_a_damaged_parquet_file_is_said_to_be_unreadable_parquet_not_an_unknown_ratings_layout(tmp_path):
    # --format auto told a .parquet file with bad bytes apart by its magic only, and answered with
    # the MovieLens layouts it understands.
    damaged = tmp_path / "day1.parquet"
    damaged.write_text("user,item,rating\n")
    with pytest.raises(DataValidationError, match="cannot be read as Parquet"):
        load_batch(str(damaged))


def test_an_unreachable_s3_batch_is_named_as_the_data_source_not_the_store():
    # It read "cannot use the store s3://...": the store was fine, the batch's endpoint was not.
    from expunge.orchestrator.config import StorageConfig
    from expunge.orchestrator.errors import StorageUnavailableError

    nowhere = StorageConfig(uri="s3://unused/store", endpoint_url="http://127.0.0.1:9", timeout_s=1)
    with pytest.raises(StorageUnavailableError, match="the data source, not the store"):
        load_batch("s3://nobucket/day1", storage=nowhere)
