"""Training files streamed through Ray Data: the same rows as in memory, counted, quarantined, never on the driver.

Inputs are real YNAT rows from the package's embedded subsample, spread over four files in four formats:
a jsonl with guids and a row with an empty title, a csv with an `id` column and a row with an unknown topic,
a parquet file without guids and a KLUE-style JSON array. 300 records, 2 of them malformed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from ynat_ray.config import DataArgs, TrainConfig
from ynat_ray.data.sources import embedded_split, load_splits
from ynat_ray.data.validation import DataValidationError
from ynat_ray.labels import LABELS

RECORDS = 300
BAD = [("a.jsonl", 7, "title"), ("b.csv", 12, "label")]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = embedded_split("train").iloc[:RECORDS].reset_index(drop=True)
    root = tmp_path_factory.mktemp("stream") / "train"
    root.mkdir()
    a = [{"guid": r.guid, "title": r.title, "label": int(r.label)} for r in src.iloc[:100].itertuples()]
    a[6]["title"] = ""  # row 7: empty text
    (root / "a.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in a), encoding="utf-8")
    b = src.iloc[100:180][["guid", "title", "label"]].rename(columns={"guid": "id"}).astype({"label": object})
    b.iloc[11, 2] = "날씨"  # row 12: not a YNAT topic
    b.to_csv(root / "b.csv", index=False)
    src.iloc[180:260][["title", "label"]].to_parquet(root / "c.parquet")
    d = [{"guid": r.guid, "title": r.title, "label": LABELS[r.label]} for r in src.iloc[260:].itertuples()]
    (root / "d.json").write_text(json.dumps(d, ensure_ascii=False), encoding="utf-8")
    return root


def _cfg(files: Path, **kw: object) -> DataArgs:
    return DataArgs(**{"data": str(files), "on_bad_rows": "skip", "validation_size": 30, "seed": 3, **kw})  # type: ignore[arg-type]


def _streamed_titles(splits: object) -> list[str]:
    return sorted(splits.train_stream.to_pandas()["title"])  # type: ignore[attr-defined]


def test_streamed_split_is_the_in_memory_split(ray_session, files):
    cfg = _cfg(files)
    first, second = load_splits(cfg, stream=True, tokenizer_rows=50), load_splits(cfg, stream=True)
    memory = load_splits(cfg)

    # Deterministic: the same hold-out on every run, and the same one the in-memory reader picks.
    assert first.streamed and first.train is None and not memory.streamed
    assert first.validation["guid"].tolist() == second.validation["guid"].tolist() == memory.validation["guid"].tolist()
    assert len(first.validation) == 30
    assert first.train_rows == second.train_rows == len(memory.train) == RECORDS - len(BAD) - 30
    assert _streamed_titles(first) == sorted(memory.train["title"])
    # Every record is accounted for exactly once, with the file's own row numbers.
    assert first.input_rows == RECORDS == first.train_rows + len(first.validation) + len(first.bad_rows)
    assert [(Path(b.source).name, b.row, b.field) for b in first.bad_rows] == BAD
    assert [(Path(b.source).name, b.row, b.field) for b in memory.bad_rows] == BAD
    # One id rule: the csv's `id` column is the guid in both readers.
    csv_ids = set(pd.read_csv(files / "b.csv")["id"])
    assert csv_ids & set(first.validation["guid"]) == csv_ids & set(memory.validation["guid"]) != set()
    # A preset's tokenizer sample: the 50 lowest-hash train titles, nothing from the hold-out.
    assert len(first.tokenizer_sample) == 50 and set(first.tokenizer_sample) <= set(memory.train["title"])
    assert not set(first.tokenizer_sample) & set(first.validation["title"])

    other = load_splits(_cfg(files, seed=4), stream=True)
    assert other.validation["guid"].tolist() != first.validation["guid"].tolist(), "the seed picks the hold-out"


def test_max_train_samples_streams_the_same_subsample(ray_session, files):
    cfg = _cfg(files, max_train_samples=100)
    streamed, memory = load_splits(cfg, stream=True), load_splits(cfg)
    assert streamed.train_rows == len(memory.train) == 100
    assert _streamed_titles(streamed) == sorted(memory.train["title"])
    assert streamed.validation["guid"].tolist() == memory.validation["guid"].tolist()
    # Nested: a bigger cap keeps every row of the smaller one (the next-lowest hashes are added).
    bigger = load_splits(_cfg(files, max_train_samples=150))
    assert set(memory.train["guid"]) <= set(bigger.train["guid"])


def test_streamed_bad_row_stops_the_run_naming_file_and_row(ray_session, files):
    with pytest.raises(DataValidationError) as err:
        load_splits(DataArgs(data=str(files), validation_size=30), stream=True)
    assert (Path(err.value.source).name, err.value.row, err.value.field) in BAD


def _plan_ops(ds: object) -> list[str]:
    """Names of every logical operator a Ray Dataset was built from."""
    names, stack = [], [ds._logical_plan.dag]  # type: ignore[attr-defined]
    while stack:
        op = stack.pop()
        names.append(op.name)
        stack += list(op.input_dependencies)
    return names


def test_fit_reads_training_files_in_ray_data_tasks(ray_session, files, storage, monkeypatch):
    """A real 2-worker TorchTrainer fit on files given as a file:// URI, quarantine to a memory:// URI."""
    import fsspec
    import ray.data
    import ray.train.torch

    from ynat_ray.train import run_training

    seen: dict = {}

    class SpyTrainer(ray.train.torch.TorchTrainer):
        def __init__(self, *args: object, **kwargs: object):
            seen.update(kwargs)
            super().__init__(*args, **kwargs)

    frames: list[int] = []
    from_pandas = ray.data.from_pandas

    def spy_from_pandas(dfs: object, *args: object, **kwargs: object) -> object:
        frames.append(sum(len(df) for df in (dfs if isinstance(dfs, list) else [dfs])))
        return from_pandas(dfs, *args, **kwargs)

    monkeypatch.setattr(ray.train.torch, "TorchTrainer", SpyTrainer)
    monkeypatch.setattr(ray.data, "from_pandas", spy_from_pandas)
    quarantine = "memory://ynat-stream-test/quarantine.jsonl"
    cfg = TrainConfig.of(
        data=f"file://{files}", validation_size=40, on_bad_rows="skip", quarantine_path=quarantine,
        epochs=1, num_workers=2, batch_size=16, storage_path=storage, materialize="no", seed=5,
    )  # fmt: skip
    outcome = run_training(cfg)

    train = seen["datasets"]["train"]
    ops = _plan_ops(train)
    assert "ReadYnatFiles" in ops and not any("FromPandas" in op for op in ops), ops
    # from_pandas built only the validation set; the train split never became a DataFrame on this driver.
    assert frames == [40], frames
    train_rows = seen["train_loop_config"]["train_rows"]
    assert train.count() == train_rows == RECORDS - len(BAD) - 40
    assert outcome.history[-1]["val_rows"] == 40 and outcome.final_metrics["split"] == "validation"

    fs = fsspec.filesystem("memory")
    lines = [json.loads(line) for line in fs.cat(quarantine.removeprefix("memory://")).decode("utf-8").splitlines()]
    assert [(Path(q["source"]).name, q["row"], q["field"]) for q in lines] == BAD
    assert train_rows + outcome.history[-1]["val_rows"] + len(lines) == RECORDS
