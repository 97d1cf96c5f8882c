"""The honest yardstick for the offline default: char n-gram TF-IDF + logistic regression on the same rows.

Trains on the embedded train split (10k real YNAT titles), picks C on the embedded validation split only, and
reports macro-F1 on the embedded test split, the rows `ynat-ray train` reports on. Single process, ~30 s.

    python bench/tfidf_baseline.py        # writes bench/results/tfidf_baseline_<time>.json

The rows are KLUE YNAT (Park et al., KLUE, 2021), CC BY-SA 4.0.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import f1_score  # noqa: E402

from ynat_ray.data import embedded_split  # noqa: E402


def tfidf_vectorizer() -> TfidfVectorizer:
    """The yardstick's features (bench/heldout_dev.py scores the same model on other rows)."""
    return TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), sublinear_tf=True, min_df=2)


def main() -> None:
    train, validation, test = (embedded_split(name) for name in ("train", "validation", "test"))
    started = time.perf_counter()
    vectorizer = tfidf_vectorizer()
    x_train = vectorizer.fit_transform(train["title"])
    x_val, x_test = vectorizer.transform(validation["title"]), vectorizer.transform(test["title"])
    scores = {}
    for c in (1.0, 3.0, 10.0, 30.0):
        model = LogisticRegression(C=c, max_iter=2000).fit(x_train, train["label"])
        scores[c] = f1_score(validation["label"], model.predict(x_val), average="macro")
    best_c = max(scores, key=scores.get)
    model = LogisticRegression(C=best_c, max_iter=2000).fit(x_train, train["label"])
    test_f1 = f1_score(test["label"], model.predict(x_test), average="macro")
    result = {
        "features": "char_wb 1-3 grams, sublinear tf, min_df 2",
        "train_rows": len(train), "validation_macro_f1_by_C": scores, "C": best_c,
        "test_rows": len(test), "test_macro_f1": test_f1, "seconds": time.perf_counter() - started,
    }  # fmt: skip
    print(json.dumps(result, indent=1))
    out = Path(__file__).parent / "results" / f"tfidf_baseline_{int(time.time())}.json"
    out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(f"char TF-IDF + logistic regression: embedded test macro-F1 {test_f1:.3f} (C={best_c:g}, chosen on validation); wrote {out}")


if __name__ == "__main__":
    main()
