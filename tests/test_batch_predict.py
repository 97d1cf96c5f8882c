"""Batch prediction end to end: real Ray Data on the session cluster, real files, the trained checkpoint.

Inputs are built from the real YNAT subsample shipped in the package (never ../shared): a jsonl file with
Korean label names and some rows without a label, a csv with an `id` column and integer labels (some
empty), and a parquet file with neither guid nor label.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ynat_ray.config import BatchConfig
from ynat_ray.data.sources import embedded_split
from ynat_ray.data.validation import DataValidationError
from ynat_ray.labels import LABELS

REPO = Path(__file__).resolve().parents[1]
# ynat_ray.batch imports Ray, and Ray fixes its auth mode when first imported: import it only inside tests,
# after conftest's session cluster has set RAY_AUTH_MODE=token for this process.


@dataclass
class Inputs:
    dir: Path
    expected: pd.DataFrame  # one row per input row, in input order: file, row, guid, title, gold


def _write_inputs(root: Path, *, break_rows: bool = False) -> Inputs:
    """a.jsonl (40 rows, Korean names, 5 unlabeled), b.csv (30 rows, `id`, int labels, 3 empty), c.parquet (10, text only)."""
    src = embedded_split("test").iloc[:80].reset_index(drop=True)
    root.mkdir(parents=True, exist_ok=True)
    a = [{"guid": r.guid, "title": r.title, "label": None if i < 5 else LABELS[r.label]} for i, r in enumerate(src.iloc[:40].itertuples())]
    if break_rows:
        a[9]["title"] = ""  # row 10: empty text
        a[20]["label"] = "날씨"  # row 21: not a YNAT topic
    (root / "a.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in a), encoding="utf-8")
    b = src.iloc[40:70][["guid", "title", "label"]].rename(columns={"guid": "id"}).astype({"label": object})
    b.iloc[[0, 7, 29], 2] = ""
    b.to_csv(root / "b.csv", index=False)
    c = src.iloc[70:80][["title"]]
    c.to_parquet(root / "c.parquet")

    gold = [r["label"] for r in a] + [LABELS[int(v)] if v != "" else None for v in b["label"]] + [None] * 10
    expected = pd.DataFrame(
        {
            "file": ["a.jsonl"] * 40 + ["b.csv"] * 30 + ["c.parquet"] * 10,
            "row": list(range(1, 41)) + list(range(1, 31)) + list(range(1, 11)),
            "guid": [r["guid"] for r in a] + b["id"].tolist() + [f"c.parquet:{i}" for i in range(1, 11)],
            "title": [r["title"] for r in a] + b["title"].tolist() + c["title"].tolist(),
            "gold": gold,
        }
    )
    return Inputs(root, expected)


def _read_predictions(output: str, fmt: str) -> pd.DataFrame:
    from ynat_ray.batch import output_files, read_output_file

    return pd.concat([read_output_file(p) for p in output_files(output, fmt)], ignore_index=True)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    return _write_inputs(tmp_path_factory.mktemp("batch") / "in")


def test_every_row_scored_in_input_order_like_pipeline(ray_session, checkpoint_dir, inputs, tmp_path, capsys):
    from transformers import pipeline

    from ynat_ray.batch import run_batch_prediction
    from ynat_ray.inference import TextClassifier

    output = str(tmp_path / "preds")
    # backend onnx (fp32): equal to pipeline() to 1e-4; auto's int8 pick is checked against the engine below.
    cfg = BatchConfig.of(
        checkpoint=checkpoint_dir, input=str(inputs.dir), output=output, all_scores=True, eval_batch_size=16, backend="onnx"
    )
    summary = run_batch_prediction(cfg)
    out = _read_predictions(output, "parquet")
    want = inputs.expected

    # Nothing dropped, nothing reordered: the file's own row numbers, in input order.
    assert summary["rows"] == summary["input_rows"] == len(out) == 80 and summary["quarantined"] == 0
    assert [Path(s).name for s in out["source"]] == want["file"].tolist()
    assert out["row"].tolist() == want["row"].tolist()
    assert out["guid"].tolist() == want["guid"].tolist()
    assert out["title"].tolist() == want["title"].tolist()
    assert out["gold"].where(out["gold"].notna(), None).tolist() == want["gold"].tolist()
    assert list(out.columns[:4]) == ["guid", "title", "label", "score"]

    # Same answers as TextClassifier and transformers.pipeline on the same checkpoint. pipeline() truncates only when
    # asked; with truncation=True it cuts at the checkpoint's trained length (48 here) as the engine does: some of
    # these titles run past 48 syllable-bigram tokens, and a rotary-position model would read them whole.
    texts = want["title"].tolist()
    probs = TextClassifier(checkpoint_dir, use_gpu=False, backend="onnx").probabilities(texts)
    assert out["label"].tolist() == [LABELS[i] for i in probs.argmax(1)]
    np.testing.assert_allclose(out["score"], probs.max(1), atol=1e-5)
    piped = pipeline("text-classification", model=checkpoint_dir, device="cpu", truncation=True)(texts, batch_size=64)
    assert out["label"].tolist() == [p["label"] for p in piped]
    np.testing.assert_allclose(out["score"], [p["score"] for p in piped], atol=1e-4)
    all_scores = out[[f"scores_{name}" for name in LABELS]].to_numpy()
    np.testing.assert_allclose(all_scores, probs, atol=1e-5)

    # Gold labels -> metrics, returned and printed.
    labeled = want["gold"].notna()
    metrics = summary["metrics"]
    assert metrics["num_rows"] == int(labeled.sum()) == 62
    assert metrics["accuracy"] == pytest.approx(float((out["label"][labeled] == want["gold"][labeled]).mean()))
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "macro-F1" in printed and "rows/s" in printed and output in printed


def test_long_titles_are_cut_at_the_trained_length_with_the_default_engine(ray_session, checkpoint_dir, tmp_path):
    """No --max_length and no --backend: actors truncate where training did (48 tokens, from the checkpoint) and
    run auto's engine; the labels equal that engine in process, and fp32 scores equal pipeline's truncation."""
    from transformers import pipeline

    from ynat_ray.batch import run_batch_prediction
    from ynat_ray.inference import TextClassifier

    titles = embedded_split("test")["title"].tolist()[:12]
    long_titles = [" ".join([t] * 8) for t in titles]  # ~100+ tokens each, far past 48
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "long.jsonl").write_text("".join(json.dumps({"title": t}, ensure_ascii=False) + "\n" for t in long_titles), "utf-8")
    base = {"checkpoint": checkpoint_dir, "input": str(tmp_path / "in")}
    auto = _run_and_read(run_batch_prediction, BatchConfig.of(**base, output=str(tmp_path / "auto")))
    engine = TextClassifier(checkpoint_dir)
    assert auto["label"].tolist() == [p["label"] for p in engine(long_titles)]

    fp32 = _run_and_read(run_batch_prediction, BatchConfig.of(**base, output=str(tmp_path / "fp32"), backend="onnx"))
    piped = pipeline("text-classification", model=checkpoint_dir, device="cpu", truncation=True)(long_titles)
    np.testing.assert_allclose(fp32["score"], [p["score"] for p in piped], atol=1e-4)


def _run_and_read(run: object, cfg: BatchConfig) -> pd.DataFrame:
    run(cfg)  # type: ignore[operator]
    return _read_predictions(cfg.batch.output, cfg.batch.output_format)


def test_malformed_row_errors_or_is_quarantined(ray_session, checkpoint_dir, tmp_path):
    from ynat_ray.batch import output_files, run_batch_prediction

    bad = _write_inputs(tmp_path / "in", break_rows=True)
    base = {"checkpoint": checkpoint_dir, "input": str(bad.dir), "eval_batch_size": 32}

    with pytest.raises(DataValidationError) as err:
        run_batch_prediction(BatchConfig.of(**base, output=str(tmp_path / "strict")))
    assert (Path(err.value.source).name, err.value.row, err.value.field) == ("a.jsonl", 10, "title")
    assert "a.jsonl: row 10: field 'title': empty" in str(err.value)
    assert not (tmp_path / "strict").exists(), "a failed run must not leave partial predictions behind"

    output = str(tmp_path / "lenient")
    summary = run_batch_prediction(BatchConfig.of(**base, output=output, output_format="jsonl", on_bad_rows="skip"))
    assert (summary["input_rows"], summary["quarantined"], summary["rows"]) == (80, 2, 78)
    quarantined = [json.loads(line) for line in Path(summary["quarantine_path"]).read_text(encoding="utf-8").splitlines()]
    assert [(Path(q["source"]).name, q["row"], q["field"]) for q in quarantined] == [("a.jsonl", 10, "title"), ("a.jsonl", 21, "label")]

    files = output_files(output, "jsonl")
    assert files and all(f.endswith(".jsonl") for f in files)
    assert any(name in Path(files[0]).read_text(encoding="utf-8") for name in LABELS), "Korean labels stay readable in jsonl"
    out = _read_predictions(output, "jsonl")
    kept = bad.expected[~((bad.expected["file"] == "a.jsonl") & bad.expected["row"].isin([10, 21]))]
    assert out["row"].tolist() == kept["row"].tolist() and out["guid"].tolist() == kept["guid"].tolist()
    assert set(out["label"]) <= set(LABELS)


def test_existing_output_needs_overwrite_and_only_predictions_get_overwritten(ray_cluster, tmp_path, inputs):
    from ynat_ray.batch import run_batch_prediction

    (tmp_path / "preds").mkdir()
    (tmp_path / "preds" / "old.parquet").write_bytes(b"x")
    cfg = BatchConfig.of(checkpoint="unused", input=str(inputs.dir), output=str(tmp_path / "preds"))
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_batch_prediction(cfg)
    (tmp_path / "preds" / "notes.txt").write_text("mine")
    cfg.batch.overwrite = True
    with pytest.raises(FileExistsError, match="not predictions"):
        run_batch_prediction(cfg)
    assert (tmp_path / "preds" / "notes.txt").exists()


def test_cpu_plan_leaves_room_for_read_and_write_tasks() -> None:
    from ynat_ray.resources import PlacementError, check_actor_budget

    check_actor_budget(1, 1, 0, cluster_cpus=2)
    check_actor_budget(2, 0.75, 0, cluster_cpus=2)
    with pytest.raises(PlacementError, match="lower --num_actors or --actor_cpus"):
        check_actor_budget(2, 1, 0, cluster_cpus=2)
    with pytest.raises(PlacementError, match="fits no node"):
        check_actor_budget(1, 1.5, 0, cluster_cpus=3, node_cpus=[1, 1, 1])
    check_actor_budget(4, 1, 1, cluster_cpus=2)  # GPU nodes autoscale in


@pytest.mark.slow
def test_ray_job_submit_predict_with_auth(ray_cluster, checkpoint_dir, inputs, tmp_path):
    """`ray job submit --working-dir <repo> -- python jobs/predict.py ...` against the `ray start --head` cluster, auth on."""
    output = tmp_path / "submitted"
    predict = ["python", "jobs/predict.py", "--checkpoint", checkpoint_dir, "--input", str(inputs.dir), "--output", str(output),
               "--output_format", "jsonl", "--eval_batch_size", "32"]  # fmt: skip
    # First show where a plain `import ynat_ray` resolves inside the job (Ray's PYTHONPATH), then run the job.
    probe = shlex.join(["python", "-c", "import ynat_ray; print('ynat_ray imported from', ynat_ray.__file__)"])
    cmd = [
        str(Path(sys.executable).with_name("ray")), "job", "submit", "--address", ray_cluster.dashboard_url, "--working-dir", str(REPO),
        "--", "sh", "-c", f"{probe} && {shlex.join(predict)}",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ray_cluster.env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout and "rows/s" in done.stdout and "macro-F1" in done.stdout
    imported_from = next(line for line in done.stdout.splitlines() if "ynat_ray imported from" in line)
    assert str(REPO) not in imported_from, "the job must run the uploaded working dir, not this checkout"

    out = _read_predictions(str(output), "jsonl")
    assert out["guid"].tolist() == inputs.expected["guid"].tolist()
    assert set(out["label"]) <= set(LABELS) and out["score"].between(0, 1).all()
