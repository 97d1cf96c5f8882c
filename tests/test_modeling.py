"""Tokenizer/model invariants and the training collate. No Ray cluster needed (CPU planning and config: test_config.py)."""

from __future__ import annotations

import pytest
import torch

from ynat_ray.data.sources import embedded_split
from ynat_ray.errors import UsageError
from ynat_ray.labels import ID2LABEL, LABELS
from ynat_ray.modeling import ModelLoadError, build_model, check_compatible, load_tokenizer

MAX_LEN = 32


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("ynat-tiny", MAX_LEN, embedded_split("train")["title"].head(3000), vocab_size=4000)


def test_special_tokens_have_roberta_ids(tokenizer):
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ("[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]")]
    assert ids == [0, 1, 2, 3, 4]
    enc = tokenizer("유튜브 크리에이터 지원")["input_ids"]
    assert enc[0] == tokenizer.cls_token_id and enc[-1] == tokenizer.sep_token_id


def test_hangul_stays_whole_and_case_is_kept(tokenizer):
    tokens = tokenizer.tokenize("유튜브 내달 운영")
    assert "유튜브" in tokens  # lowercasing normalizers would split syllables into jamo (ㅇ ㅠ ...)
    assert not any("\u1100" <= ch <= "\u11ff" for tok in tokens for ch in tok)
    assert tokenizer.tokenize("AI")[0] != tokenizer.tokenize("ai")[0]


def test_model_config_matches_tokenizer_and_labels(tokenizer):
    model = build_model("ynat-tiny", tokenizer, MAX_LEN)
    cfg = model.config
    assert cfg.max_position_embeddings == MAX_LEN + 2
    assert cfg.pad_token_id == tokenizer.pad_token_id == 1
    assert {int(k): v for k, v in cfg.id2label.items()} == ID2LABEL and list(cfg.label2id) == list(LABELS)
    # The longest allowed input runs (position ids reach max_length + 1).
    long_text = " ".join(["경제"] * 500)
    enc = tokenizer([long_text, "짧은 제목"], truncation=True, max_length=MAX_LEN, padding=True, return_tensors="pt")
    assert enc["input_ids"].shape[1] == MAX_LEN
    with torch.no_grad():
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    assert logits.shape == (2, 7)


def test_wide_preset_is_a_mean_pooled_modernbert(tokenizer):
    """ynat-wide (and the default ynat-bigram, its shape over other tokens: tests/test_vocab.py) classifies from the
    mean of its token states, so a title's meaning does not hang on [CLS]."""
    model = build_model("ynat-wide", tokenizer, MAX_LEN, hidden_dropout=0.3, attention_dropout=0.2).eval()
    cfg = model.config
    assert cfg.model_type == "modernbert" and cfg.classifier_pooling == "mean"
    assert cfg.max_position_embeddings == MAX_LEN and cfg.pad_token_id == tokenizer.pad_token_id == 1
    assert (cfg.embedding_dropout, cfg.mlp_dropout, cfg.classifier_dropout, cfg.attention_dropout) == (0.3, 0.3, 0.3, 0.2)
    assert {int(k): v for k, v in cfg.id2label.items()} == ID2LABEL
    enc = tokenizer(["삼성전자 주가 상승", "축구 대표팀 승리"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
        # Padding must not change a title's score: the mean runs over real tokens only.
        padded = tokenizer(["삼성전자 주가 상승"], padding="max_length", max_length=MAX_LEN, return_tensors="pt")
        alone = model(**padded).logits
    assert logits.shape == (2, 7)
    assert torch.allclose(alone[0], logits[0], atol=1e-5)
    with pytest.raises(UsageError, match="max_position_embeddings"):
        check_compatible(tokenizer, cfg, MAX_LEN + 1)


def test_incompatible_pad_or_positions_are_refused(tokenizer):
    model = build_model("ynat-tiny", tokenizer, MAX_LEN)
    model.config.pad_token_id = 0
    with pytest.raises(ModelLoadError, match="pad_token_id"):
        check_compatible(tokenizer, model.config, MAX_LEN)
    model.config.pad_token_id = 1
    with pytest.raises(UsageError, match="max_position_embeddings"):
        check_compatible(tokenizer, model.config, MAX_LEN + 1)


def test_unreachable_model_names_the_presets():
    # conftest sets HF_HUB_OFFLINE=1, so this is what a user without the hub sees.
    with pytest.raises(ModelLoadError, match="ynat-tiny"):
        load_tokenizer("klue/roberta-base", MAX_LEN)


def test_token_dropout_masks_only_real_tokens_and_only_in_training_batches(tokenizer):
    import numpy as np

    from ynat_ray.train import PadCollate

    titles = embedded_split("train")["title"].head(64).tolist()
    batch = {"input_ids": np.array([np.array(tokenizer(t)["input_ids"]) for t in titles], dtype=object), "labels": np.zeros(64)}
    plain = PadCollate(tokenizer)(batch)
    dropped = PadCollate(tokenizer, token_dropout=0.3, seed=7)(batch)
    again = PadCollate(tokenizer, token_dropout=0.3, seed=7)(batch)
    assert torch.equal(dropped["input_ids"], again["input_ids"]), "seeded: the same masks for the same seed"
    changed = dropped["input_ids"] != plain["input_ids"]
    assert (dropped["input_ids"][changed] == tokenizer.mask_token_id).all()
    special = torch.isin(plain["input_ids"], torch.tensor(tokenizer.all_special_ids))
    assert not (changed & special).any(), "[CLS], [SEP] and padding are never masked"
    assert torch.equal(dropped["attention_mask"], plain["attention_mask"])
    real = (~special).sum().item()
    assert 0.2 * real < changed.sum().item() < 0.4 * real
