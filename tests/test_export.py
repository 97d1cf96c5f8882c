"""ONNX export: parity with torch, int8 agreement, idempotence, dynamic axes and the read-only cache path.

No Ray and no network: the checkpoint is a ynat-tiny model trained in-process for ~100 steps. Briefly
trained on purpose: a random-init model predicts nearly one class for every title, and then int8 "agrees"
with fp32 whatever the quantization does.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest
import torch

from ynat_ray.checkpoint import CACHE_ENV, ONNX_FP32_FILE, ONNX_INT8_FILE, PARITY_FILE, content_hash, export_cache_dir
from ynat_ray.data.sources import embedded_split
from ynat_ray.export import FP32_MAX_ABS_DIFF, export_checkpoint, int8_settings, load_parity
from ynat_ray.features import encode_texts
from ynat_ray.modeling import build_model
from ynat_ray.runners import ort_session, softmax
from ynat_ray.vocab import train_char_bigram_tokenizer

MAX_LENGTH = 64
ROWS = 300  # validation rows for the parity check: enough for a 1% disagreement budget to mean something
THREADS = 2


@pytest.fixture(scope="module")
def validation() -> tuple[list[str], list[int]]:
    rows = embedded_split("validation").iloc[:ROWS]
    return rows["title"].tolist(), rows["label"].tolist()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A Hugging Face checkpoint directory of a ynat-tiny model trained 100 steps of batch 32 (a few seconds)."""
    train = embedded_split("train")
    # The bigram tokenizer: its vocabulary is the same in every process. HF's WordPiece trainer breaks ties between
    # equally frequent pairs in hash-map order, so its vocabulary (and so this model and its int8 agreement) changed
    # from run to run and with TOKENIZERS_PARALLELISM, which tokenizers turns off after a fork (order-dependent).
    tokenizer = train_char_bigram_tokenizer(train["title"].tolist(), vocab_size=8000, max_length=MAX_LENGTH)
    model = build_model("ynat-tiny", tokenizer, MAX_LENGTH, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 2x128 model gains little from 2 threads, and on a busy 2-core box loses a lot
    try:
        model.train()
        for _ in range(100):
            idx = rng.choice(len(train), size=32, replace=False)
            batch = encode_texts(tokenizer, train["title"].iloc[idx].tolist(), MAX_LENGTH, return_tensors="pt")
            labels = torch.tensor(train["label"].iloc[idx].to_numpy(dtype=np.int64, copy=True))
            loss = model(**batch, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    path = tmp_path_factory.mktemp("export") / "checkpoint"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def exported(checkpoint: str, validation: tuple[list[str], list[int]]) -> dict:
    texts, labels = validation
    lines: list[str] = []
    record = export_checkpoint(checkpoint, texts=texts, labels=labels, threads=THREADS, log=lines.append)
    assert len(lines) == 1 and "exported" in lines[0]
    return record


def test_parity_record(checkpoint: str, exported: dict) -> None:
    onnx_dir = os.path.join(checkpoint, "onnx")
    assert exported["onnx_dir"] == onnx_dir == export_cache_dir(checkpoint)
    for name in (ONNX_FP32_FILE, ONNX_INT8_FILE, PARITY_FILE):
        assert os.path.isfile(os.path.join(onnx_dir, name)), name
    assert load_parity(onnx_dir) == exported
    assert exported["rows"] == ROWS and exported["max_length"] == MAX_LENGTH  # the trained length, from the position table
    assert exported["content_hash"] == content_hash(checkpoint)
    assert exported["int8_settings"] == int8_settings()
    # The model learned something (one class for every title scores macro-F1 ~0.08; this one ~0.28), so the
    # int8 agreement below is not trivially met.
    assert exported["fp32_macro_f1"] > 0.2, exported
    assert exported["fp32_max_abs_diff"] <= FP32_MAX_ABS_DIFF and exported["fp32_ok"], exported
    assert exported["int8_label_agreement"] >= 0.99, exported
    assert exported["int8_macro_f1"] >= exported["fp32_macro_f1"] - 0.005, exported
    assert exported["int8_ok"], exported


def test_dynamic_batch_and_sequence_axes(checkpoint: str, exported: dict) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    fp32 = ort_session(os.path.join(exported["onnx_dir"], ONNX_FP32_FILE), THREADS)
    int8 = ort_session(os.path.join(exported["onnx_dir"], ONNX_INT8_FILE), THREADS)
    assert [i.name for i in fp32.get_inputs()] == ["input_ids", "attention_mask"]
    assert [o.name for o in fp32.get_outputs()] == ["logits"]
    titles = embedded_split("validation")["title"].tolist()[ROWS : ROWS + 17]
    shapes = set()
    for texts in (titles[:1], titles, [t[:6] for t in titles[:3]]):  # batch 1, batch 17 (padded), short titles
        feed = encode_texts(tokenizer, texts, MAX_LENGTH, return_tensors="np")
        shapes.add(feed["input_ids"].shape)
        with torch.inference_mode():
            expected = torch.softmax(model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits, -1).numpy()
        got = softmax(fp32.run(["logits"], feed)[0])
        assert got.shape == (len(texts), 7)
        assert np.abs(got - expected).max() <= FP32_MAX_ABS_DIFF
        assert int8.run(["logits"], feed)[0].shape == (len(texts), 7)
    assert len({s[1] for s in shapes}) == 3, shapes  # three different sequence lengths went through one graph


def _stats(onnx_dir: str) -> dict[str, tuple[int, int]]:
    """(inode, mtime_ns) per file: a re-export renames a new file in, so the inode changes even within one mtime tick."""
    out = {}
    for name in (ONNX_FP32_FILE, ONNX_INT8_FILE, PARITY_FILE):
        st = os.stat(os.path.join(onnx_dir, name))
        out[name] = (st.st_ino, st.st_mtime_ns)
    return out


def test_export_is_idempotent_and_force_reexports(checkpoint: str, exported: dict, validation: tuple[list[str], list[int]]) -> None:
    texts, labels = validation
    before = _stats(exported["onnx_dir"])
    lines: list[str] = []
    again = export_checkpoint(checkpoint, texts=texts, labels=labels, threads=THREADS, log=lines.append)
    assert again == exported
    assert _stats(exported["onnx_dir"]) == before
    assert len(lines) == 1 and "up to date" in lines[0]

    forced = export_checkpoint(checkpoint, texts=texts[:64], labels=labels[:64], threads=THREADS, force=True, log=lines.append)
    after = _stats(exported["onnx_dir"])
    assert all(after[name] != before[name] for name in before), (before, after)
    assert forced["rows"] == 64 and forced["fp32_ok"] and load_parity(exported["onnx_dir"]) == forced


def _make_unwritable(path: str) -> str:
    """Make a directory unwritable for this process; return how, or skip when that is impossible.

    As root, mode bits do not stop writes (and os.access says writable), so chmod 0o555 proves nothing.
    The immutable attribute (chattr +i) stops root too, where the filesystem and capabilities allow it.
    """
    if os.geteuid() != 0:
        os.chmod(path, 0o555)
        return "chmod"
    chattr = shutil.which("chattr")
    if chattr and subprocess.run([chattr, "+i", path], capture_output=True).returncode == 0:
        return "chattr"
    pytest.skip("running as root without a working `chattr +i`: root ignores mode bits, so no directory can be made unwritable here")


def _restore(path: str, how: str) -> None:
    if how == "chattr":
        subprocess.run(["chattr", "-i", path], check=True)
    else:
        os.chmod(path, 0o755)


def test_unwritable_checkpoint_exports_to_hash_cache(
    checkpoint: str, tmp_path, monkeypatch: pytest.MonkeyPatch, validation: tuple[list[str], list[int]]
) -> None:
    texts, labels = validation
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    for name in os.listdir(checkpoint):
        if os.path.isfile(os.path.join(checkpoint, name)):
            shutil.copy2(os.path.join(checkpoint, name), readonly / name)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    how = _make_unwritable(str(readonly))
    try:
        assert not os.access(readonly, os.W_OK)
        expected_dir = str(tmp_path / "cache" / "onnx" / content_hash(str(readonly)))
        assert export_cache_dir(str(readonly)) == expected_dir
        record = export_checkpoint(str(readonly), texts=texts[:64], labels=labels[:64], threads=THREADS, log=lambda _: None)
        assert record["onnx_dir"] == expected_dir and record["fp32_ok"]
        assert record["content_hash"] == content_hash(checkpoint)  # same weights, same key
        assert sorted(os.listdir(expected_dir)) == sorted([ONNX_FP32_FILE, ONNX_INT8_FILE, PARITY_FILE])
        assert not os.path.exists(readonly / "onnx")
    finally:
        _restore(str(readonly), how)


def test_int8_settings_follow_cpu_flags() -> None:
    vnni = int8_settings({"avx2", "fma", "avx512f", "avx512_vnni"})
    assert (vnni["weight_type"], vnni["reduce_range"]) == ("QInt8", False)
    assert vnni["isa"]["avx512_vnni"]
    assert int8_settings({"avx2", "fma", "avx_vnni"})["reduce_range"] is False
    avx2 = int8_settings({"avx2", "fma"})
    assert (avx2["weight_type"], avx2["reduce_range"]) != ("QInt8", False)  # U8S8 at full range can saturate without VNNI
    assert "no VNNI" in avx2["reason"]
    assert int8_settings(set()) == {**avx2, "isa": {k: False for k in avx2["isa"]}}  # no /proc/cpuinfo: the safe choice


def test_backend_mistakes_are_usage_errors() -> None:
    from ynat_ray.errors import UsageError
    from ynat_ray.inference import choose_backend

    with pytest.raises(UsageError, match="unknown backend"):
        choose_backend("tensorrt", "cpu", None)
    with pytest.raises(UsageError, match="CPU only"):
        choose_backend("onnx-int8", "cuda", None)
    assert choose_backend("auto", "cpu", None).name == "torch"


def test_score_reports_the_engines_top_label() -> None:
    from ynat_ray.metrics import score

    class Engine:
        def probabilities(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
            return np.eye(7, dtype=np.float32)[[len(t) % 7 for t in texts]]

    metrics, probs = score(Engine(), ["a", "bb", "ccc"], [1, 2, 0], batch_size=2)  # type: ignore[arg-type]
    assert probs.shape == (3, 7) and metrics["num_rows"] == 3 and metrics["accuracy"] == 2 / 3
