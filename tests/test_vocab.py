"""The presets' tokenizers: the syllable-bigram default and its doubling character map. No Ray needed."""

from __future__ import annotations

import unicodedata
from collections import Counter

import pytest
from tokenizers import normalizers
from transformers import AutoTokenizer

from ynat_ray.data.sources import embedded_split
from ynat_ray.modeling import PRESETS, build_model, load_tokenizer
from ynat_ray.vocab import MIN_BIGRAM_COUNT, SPECIAL_TOKENS, doubling_charsmap, train_char_bigram_tokenizer, train_tokenizer

MAX_LEN = 64


@pytest.fixture(scope="module")
def titles() -> list[str]:
    return embedded_split("train")["title"].head(3000).tolist()


@pytest.fixture(scope="module")
def tokenizer(titles: list[str]):
    return load_tokenizer("ynat-bigram", MAX_LEN, titles)


def test_the_charsmap_doubles_every_known_character_of_any_utf8_length() -> None:
    known = ["a", "é", "中", "가", "힣", "…", "😀"]  # 1-, 2-, 3- and 4-byte UTF-8, Hangul at both ends of its block
    doubling = normalizers.Precompiled(doubling_charsmap(known))
    assert doubling.normalize_str("가a 힣é 中…😀") == "가가aa 힣힣éé 中中……😀😀"
    assert doubling.normalize_str("나 b") == "나 b", "unknown characters and spaces pass through once"


def test_a_word_becomes_its_first_syllable_every_neighbouring_pair_and_its_last(tokenizer) -> None:
    tokens = tokenizer.tokenize("정부 경제정책")
    assert tokens[:3] == ["정", "정부", "부"]
    assert tokens[3] == "경" and tokens[-1] == "책"
    known_pairs = [t for t in tokens[4:-1] if len(t) == 2]
    assert known_pairs == [p for p in ("경제", "제정", "정책") if p in tokenizer.get_vocab()]
    enc = tokenizer("정부 경제정책")["input_ids"]
    assert enc[0] == tokenizer.cls_token_id and enc[-1] == tokenizer.sep_token_id


def test_rare_pairs_fall_back_to_their_syllables_and_unseen_characters_to_unk(tokenizer) -> None:
    vocab = tokenizer.get_vocab()
    assert "가" in vocab and "힣" not in vocab and "가힣" not in vocab
    # 가 is doubled, the unseen 힣 is not: 가가힣 -> 가 | 가힣, and a piece with an unknown syllable is one [UNK].
    assert tokenizer.tokenize("가힣") == ["가", "[UNK]"]
    chars = sorted(t for t in vocab if len(t) == 1 and t not in SPECIAL_TOKENS and "가" <= t <= "힣")
    rare = next(a + b for a in chars for b in chars if a + b not in vocab)
    assert tokenizer.tokenize(rare) == [rare[0], rare[0], rare[1], rare[1]], "first, the unknown pair as two syllables, last"


def test_vocabulary_is_every_character_then_frequent_pairs_up_to_the_cap(titles: list[str], tokenizer) -> None:
    vocab = tokenizer.get_vocab()
    assert [vocab[t] for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4], "klue/roberta-base's special ids"
    nfc = [unicodedata.normalize("NFC", t) for t in titles]  # e.g. the compatibility ideograph 樂 (U+F914) -> U+6A02
    chars = {c for t in nfc for c in t if not c.isspace()}
    assert chars <= set(vocab)
    pairs = Counter(w[i : i + 2] for t in nfc for w in t.split() for i in range(len(w) - 1))
    frequent = {p for p, n in pairs.items() if n >= MIN_BIGRAM_COUNT}
    assert {t for t in vocab if len(t) == 2 and t not in SPECIAL_TOKENS} == frequent - chars
    capped = train_char_bigram_tokenizer(titles, vocab_size=len(SPECIAL_TOKENS) + len(chars) + 100, max_length=MAX_LEN)
    kept = [t for t in capped.get_vocab() if len(t) == 2 and t not in chars]
    assert len(kept) == 100 and chars <= set(capped.get_vocab())
    assert min(pairs[p] for p in kept) >= max(pairs[p] for p in frequent - set(kept) - chars), "the cap keeps the most frequent"


def test_saved_tokenizer_loads_back_as_a_stock_one(tmp_path, titles: list[str], tokenizer) -> None:
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for title in titles[:200]:
        assert loaded(title)["input_ids"] == tokenizer(title)["input_ids"]


def test_the_default_preset_pairs_bigrams_with_a_mean_pooled_modernbert(tokenizer) -> None:
    assert PRESETS["ynat-bigram"].tokenizer == "char-bigram"
    model = build_model("ynat-bigram", tokenizer, MAX_LEN)
    assert model.config.vocab_size == len(tokenizer) and model.config.classifier_pooling == "mean"


def test_an_unknown_tokenizer_kind_is_an_error(titles: list[str]) -> None:
    with pytest.raises(ValueError, match="unknown tokenizer kind 'bpe'"):
        train_tokenizer("bpe", titles, 1000, MAX_LEN)
