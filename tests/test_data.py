"""Readers and validation: every format, every bad-row case, splits, quarantine. No Ray needed."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from ynat_ray.config import DataArgs, RowArgs
from ynat_ray.data.files import expand_paths
from ynat_ray.data.reading import read_rows
from ynat_ray.data.sources import HubUnavailableError, embedded_split, hub_split, load_splits
from ynat_ray.data.validation import DataValidationError
from ynat_ray.errors import UsageError, YnatError
from ynat_ray.labels import LABELS

ROWS = [
    {"guid": "ynat-v1_train_00000", "title": "유튜브 내달 2일까지 크리에이터 지원 공간 운영", "label": 3, "url": None, "date": None},
    {"guid": "ynat-v1_train_00001", "title": "어버이날 맑다가 흐려져…남부지방 옅은 황사", "label": 3, "url": None, "date": None},
    {"guid": "ynat-v1_train_00002", "title": "내년부터 국가RD 평가 때 논문건수는 반영 않는다", "label": 2, "url": None, "date": None},
]


def write(path, rows, fmt: str) -> str:
    if fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    elif fmt == "json":  # the KLUE original: one JSON array, labels as Korean names
        path.write_text(
            json.dumps([{**r, "label": LABELS[r["label"]]} if isinstance(r.get("label"), int) else r for r in rows], ensure_ascii=False)
        )
    elif fmt == "csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    elif fmt == "parquet":
        pd.DataFrame(rows).to_parquet(path)
    return str(path)


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_each_format_reads_the_same_rows(tmp_path, fmt):
    path = write(tmp_path / f"train.{fmt}", ROWS, fmt)
    df = read_rows(path, RowArgs())
    assert df["title"].tolist() == [r["title"] for r in ROWS]
    assert df["label"].tolist() == [3, 3, 2]
    assert df["guid"].tolist() == [r["guid"] for r in ROWS]


def test_directory_and_glob(tmp_path):
    write(tmp_path / "a.jsonl", ROWS[:2], "jsonl")
    write(tmp_path / "b.csv", ROWS[2:], "csv")
    (tmp_path / "notes.txt").write_text("ignored")
    assert len(read_rows(str(tmp_path), RowArgs())) == 3
    assert expand_paths(str(tmp_path / "*.jsonl")) == [str(tmp_path / "a.jsonl")]
    with pytest.raises(FileNotFoundError):
        expand_paths(str(tmp_path / "missing.jsonl"))


def test_custom_columns_and_label_names(tmp_path):
    rows = [{"id": 1, "headline": "증시 상승 마감", "topic": "경제"}, {"id": 2, "headline": "손흥민 시즌 10호골", "topic": "5"}]
    path = write(tmp_path / "x.jsonl", rows, "jsonl")
    df = read_rows(path, RowArgs(text_column="headline", label_column="topic"))
    assert df["label"].tolist() == [1, 5]
    assert df["title"].tolist() == ["증시 상승 마감", "손흥민 시즌 10호골"]


BAD_CASES = [
    ({"title": None, "label": 1}, "title", "missing"),
    ({"label": 1}, "title", "missing"),
    ({"title": "   ", "label": 1}, "title", "empty"),
    ({"title": 12345, "label": 1}, "title", "wrong type"),
    ({"title": "정상 제목", "label": "연예"}, "label", "unknown label"),
    ({"title": "정상 제목", "label": 9}, "label", "unknown label"),
    ({"title": "정상 제목", "label": [1]}, "label", "wrong type"),
    ({"title": "정상 제목", "label": None}, "label", "missing"),
]


@pytest.mark.parametrize(("bad", "field", "reason"), BAD_CASES)
def test_bad_row_names_file_row_and_field(tmp_path, bad, field, reason):
    path = write(tmp_path / "train.jsonl", [ROWS[0], ROWS[1], bad], "jsonl")
    with pytest.raises(DataValidationError) as info:
        read_rows(path, RowArgs())
    err = info.value
    assert (err.source, err.row, err.field) == (path, 3, field)
    assert reason in str(err) and path in str(err) and "row 3" in str(err)


def test_invalid_json_line_is_named(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(ROWS[0], ensure_ascii=False) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DataValidationError, match=r"broken.jsonl: row 2"):
        read_rows(str(path), RowArgs())


def test_skip_mode_quarantines_and_counts(tmp_path):
    data = tmp_path / "train.jsonl"
    write(data, [ROWS[0], {"title": "", "label": 1}, ROWS[1], {"title": "x", "label": "연예"}, ROWS[2]], "jsonl")
    cfg = DataArgs(data=str(data), validation_size=1, on_bad_rows="skip")
    splits = load_splits(cfg)
    assert len(splits.train) + len(splits.validation) == 3
    assert [(b.row, b.field) for b in splits.bad_rows] == [(2, "title"), (4, "label")]
    from ynat_ray.data.quarantine import write_quarantine

    out = tmp_path / "q" / "quarantine.jsonl"
    assert write_quarantine(splits.bad_rows, str(out)) == 2
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert lines[1]["record"]["label"] == "연예" and lines[1]["row"] == 4


def test_embedded_default_is_the_notebook_sized_real_subsample():
    train, valid, test = embedded_split("train"), embedded_split("validation"), embedded_split("test")
    assert (len(train), len(valid), len(test)) == (10_000, 1_000, 1_000)
    assert set(valid["guid"]).isdisjoint(test["guid"])
    assert set(train["label"]) == set(range(7))
    assert train["guid"].str.startswith("ynat-v1_train_").all() and test["guid"].str.startswith("ynat-v1_dev_").all()


def test_splits_are_reproducible_and_subsampled(tmp_path):
    rows = [{"title": f"제목 {i}", "label": i % 7} for i in range(60)]
    data = write(tmp_path / "t.jsonl", rows, "jsonl")
    cfg = DataArgs(data=data, validation_size=10, max_train_samples=20, seed=7)
    a, b = load_splits(cfg), load_splits(cfg)
    assert a.train["title"].tolist() == b.train["title"].tolist() and len(a.train) == 20
    assert len(a.validation) == 10 and set(a.validation["title"]).isdisjoint(a.train["title"])
    c = load_splits(DataArgs(data=data, validation_size=10, max_train_samples=20, seed=8))
    assert c.train["title"].tolist() != a.train["title"].tolist()


def test_hub_unreachable_names_the_offline_alternative():
    # conftest sets HF_HUB_OFFLINE=1: the same failure a machine without the hub gets, without waiting on retries.
    with pytest.raises(HubUnavailableError, match="--data embedded"):
        hub_split("validation", RowArgs())


def test_data_errors_are_user_errors(tmp_path):
    """What the user can fix is a YnatError (one line from the CLI), never a bare ValueError (a bug's traceback)."""
    from ynat_ray.data.stream import stream_file_splits

    assert issubclass(DataValidationError, YnatError) and issubclass(HubUnavailableError, YnatError)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(YnatError, match="no valid training rows"):
        load_splits(DataArgs(data=str(empty)))
    with pytest.raises(UsageError, match="clashes with a column the reader adds"):  # refused before Ray is needed
        stream_file_splits(DataArgs(data=str(empty), text_column="source"))


def test_hold_out_depends_on_guids_not_on_file_layout(tmp_path):
    """The hash split keys on guid: the same rows in one file or spread over two give the same hold-out."""
    rows = [{"guid": f"g{i:03d}", "title": f"제목 {i}", "label": i % 7} for i in range(80)]
    one = tmp_path / "one"
    one.mkdir()
    write(one / "all.jsonl", rows, "jsonl")
    two = tmp_path / "two"
    two.mkdir()
    write(two / "a.csv", rows[::2], "csv")
    write(two / "b.parquet", rows[1::2], "parquet")
    a = load_splits(DataArgs(data=str(one), validation_size=12, max_train_samples=30))
    b = load_splits(DataArgs(data=str(two), validation_size=12, max_train_samples=30))
    assert sorted(a.validation["guid"]) == sorted(b.validation["guid"]) and len(a.validation) == 12
    assert sorted(a.train["guid"]) == sorted(b.train["guid"]) and len(a.train) == 30
    assert set(a.validation["guid"]).isdisjoint(a.train["guid"])


@pytest.mark.parametrize("total", [1, 5, 300, 70_000])
def test_boundary_buckets_rank_like_a_full_sort(total):
    """What the streaming path knows (a histogram + the hashes of the boundary buckets) finds the same
    thresholds and counts as sorting every hash in memory."""
    import numpy as np

    from ynat_ray.data.splits import HashOrder, hash_buckets, plan_hash_split, split_hashes

    hashes = split_hashes([f"row-{i}" for i in range(total)], seed=11)
    order = HashOrder.from_hashes(hashes)
    ordered = np.sort(hashes)
    for hold_out, cap in [(0, None), (0, total // 2), (total // 3, None), (total // 3, total // 4), (total - 1, 1)]:
        if hold_out >= total:
            continue
        full, full_rows = plan_hash_split(order, hashes, 11, hold_out, cap)
        needed = {order.bucket_at(r) for r in (hold_out, hold_out + (cap or 0)) if order.bucket_at(r) is not None}
        partial, partial_rows = plan_hash_split(order, hashes[np.isin(hash_buckets(hashes), list(needed))], 11, hold_out, cap)
        assert full == partial and full_rows == partial_rows
        assert int(full.validation_mask(hashes).sum()) == hold_out
        assert full_rows == int(full.train_mask(hashes).sum()) == (total - hold_out if cap is None else min(cap, total - hold_out))
        if hold_out:
            assert full.valid_below == int(ordered[hold_out])  # exactly the hold_out lowest hashes
    with pytest.raises(UsageError, match="lower --validation_size"):
        plan_hash_split(order, hashes, 11, total, None)


def test_id_column_is_the_guid_everywhere(tmp_path):
    rows = [{"id": "ynat-v1_train_00000", "title": ROWS[0]["title"], "label": 3}, {"id": "x-2", "title": ROWS[1]["title"], "label": 3}]
    df = read_rows(write(tmp_path / "with_id.csv", rows, "csv"), RowArgs())
    assert df["guid"].tolist() == ["ynat-v1_train_00000", "x-2"]
    both = [{**r, "guid": f"g{i}"} for i, r in enumerate(rows)]  # a real guid column wins over id
    assert read_rows(write(tmp_path / "both.jsonl", both, "jsonl"), RowArgs())["guid"].tolist() == ["g0", "g1"]
    # ...unless `id` is what the user named as the text column.
    texts = write(tmp_path / "id_text.jsonl", [{"id": ROWS[0]["title"], "label": 3}], "jsonl")
    assert read_rows(texts, RowArgs(text_column="id"))["guid"].tolist() == ["id_text.jsonl:1"]


@pytest.mark.parametrize("scheme", ["memory", "file"])
def test_quarantine_writer_takes_uris(tmp_path, scheme):
    import fsspec

    from ynat_ray.data.quarantine import write_quarantine
    from ynat_ray.data.validation import BadRow

    bad = [BadRow("s3://bucket/train.jsonl", 4, "title", "empty", {"title": "", "label": 1})]
    uri = "memory://quarantine-test/nested/q.jsonl" if scheme == "memory" else f"file://{tmp_path}/deep/dir/q.jsonl"
    assert write_quarantine(bad, uri) == 1
    with fsspec.open(uri, "rt", encoding="utf-8") as fh:
        assert json.loads(fh.read())["row"] == 4
    assert write_quarantine([], str(tmp_path / "never.jsonl")) == 0 and not (tmp_path / "never.jsonl").exists()


def test_hub_bad_rows_are_quarantined_and_counted(monkeypatch):
    """klue/ynat rows go through the same validation; with skip, bad ones are returned for the quarantine."""
    import datasets

    good = [{"guid": f"ynat-v1_train_{i:05d}", "title": f"{ROWS[i % 3]['title']} {i}", "label": i % 7} for i in range(30)]
    splits = {
        "train": [*good[:20], {"guid": "bad-1", "title": "", "label": 1}],
        "validation": [*good[20:], {"guid": "bad-2", "title": "x", "label": 9}],
    }

    def fake_load_dataset(name: str, config: str, split: str) -> datasets.Dataset:
        assert (name, config) == ("klue", "ynat")
        return datasets.Dataset.from_list(splits[split])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    loaded = load_splits(DataArgs(data="hub", validation_size=4, on_bad_rows="skip"))
    # As before: validation_size rows of hub validation become test, as many of the rest validation.
    assert len(loaded.train) == 20 and len(loaded.validation) == 4 and len(loaded.test) == 4
    where = [(b.source, b.row, b.field) for b in loaded.bad_rows]
    assert where == [("hub:klue/ynat/train", 21, "title"), ("hub:klue/ynat/validation", 11, "label")]
    with pytest.raises(DataValidationError, match="hub:klue/ynat/train: row 21"):
        load_splits(DataArgs(data="hub", validation_size=4))
