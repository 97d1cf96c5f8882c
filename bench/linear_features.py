"""Which input a model of the titles does best with: one linear model, many feature sets (docs/tuning.md, round 7).

The yardstick's classifier (bench/tfidf_baseline.py) on sublinear TF-IDF over each feature set, trained on the
embedded train rows, C (3 or 10) chosen on the embedded validation rows, scored on validation, test and, with
--dev, the 5,107 held-out KLUE dev rows of bench/heldout_dev.py. Why it is here: it showed that the from-scratch transformer's plateau (~0.70 on
held-out dev) was the plateau of its WordPiece input, and that syllable pairs inside words carry most of what
the char n-gram yardstick knows, which is how the default tokenizer became syllable bigrams.

    python bench/linear_features.py --dev /path/to/klue-ynat/validation.jsonl    # ~2 min, single process

Writes bench/results/linear_features_<time>.json. The rows are KLUE YNAT (Park et al., 2021), CC BY-SA 4.0.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import common
from sklearn.feature_extraction.text import TfidfVectorizer
from tfidf_baseline import classifier, macro_f1, tfidf_vectorizer

MAX_LENGTH = 64
C_CHOICES = (3.0, 10.0)  # per feature set, chosen on validation: other features want other regularisation


def token_features(tokenize: Callable[[str], list[str]], ngrams: tuple[int, int] = (1, 1)) -> TfidfVectorizer:
    """TF-IDF over a tokenizer's tokens (and, with ngrams (1, 2), pairs of neighbouring tokens)."""
    return TfidfVectorizer(tokenizer=tokenize, lowercase=False, token_pattern=None, ngram_range=ngrams, sublinear_tf=True)


def feature_sets(train_titles: list[str]) -> dict[str, TfidfVectorizer]:
    from ynat_ray.vocab import train_char_bigram_tokenizer, train_wordpiece_tokenizer

    wordpiece = {v: train_wordpiece_tokenizer(train_titles, v, MAX_LENGTH) for v in (4000, 8000, 16000, 30000)}
    bigram = train_char_bigram_tokenizer(train_titles, 16000, MAX_LENGTH)
    sets = {f"WordPiece {v} tokens": token_features(tok.tokenize) for v, tok in wordpiece.items()}
    sets["WordPiece 4000 tokens + token pairs"] = token_features(wordpiece[4000].tokenize, (1, 2))
    sets["ynat-bigram tokens (the default tokenizer)"] = token_features(bigram.tokenize)
    # The yardstick's vectorizer (char_wb, sublinear tf, min_df 2), over singles, pairs or 1-3-grams.
    sets["single characters"] = tfidf_vectorizer((1, 1))
    sets["character pairs inside words"] = tfidf_vectorizer((2, 2))
    sets["character 1-3-grams inside words (the yardstick)"] = tfidf_vectorizer((1, 3))
    return sets


def main() -> None:
    from ynat_ray.data.sources import embedded_split

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dev", help="KLUE YNAT dev rows (jsonl); adds the held-out dev column (bench/heldout_dev.py).")
    args = parser.parse_args()
    splits = {name: embedded_split(name) for name in ("train", "validation", "test")}
    if args.dev:
        from heldout_dev import held_out_rows

        splits["held-out dev"] = held_out_rows(args.dev)
    train = splits.pop("train")
    results = {}
    for name, vectorizer in feature_sets(train["title"].tolist()).items():
        x_train = vectorizer.fit_transform(train["title"])
        scores = {}
        for c in C_CHOICES:
            model = classifier(c).fit(x_train, train["label"])
            scores[c] = {s: macro_f1(rows["label"], model.predict(vectorizer.transform(rows["title"]))) for s, rows in splits.items()}
        best_c = max(scores, key=lambda c: scores[c]["validation"])
        results[name] = {"C": best_c, "features": x_train.shape[1], **scores[best_c]}
        print(f"{name:50s} C={best_c:<4g} " + "  ".join(f"{s} {v:.3f}" for s, v in scores[best_c].items()), flush=True)
    common.write_results("linear_features", results)


if __name__ == "__main__":
    main()
