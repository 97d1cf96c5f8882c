"""The honest yardstick for the offline default: char n-gram TF-IDF + logistic regression on the same rows.

The yardstick is defined once, in `ynat_ray.linear` (`ynat-ray train --teacher linear` distills from the same
model); every bench script that scores "the char TF-IDF baseline" imports it through here. Run as a script, it trains on the embedded
train split (10k real YNAT titles), shows that C was chosen on the embedded validation split only (macro-F1 for
each C of `C_GRID`), and reports macro-F1 on the embedded test split, the rows `ynat-ray train` reports on.
Single process, about a minute.

    python bench/tfidf_baseline.py        # writes bench/results/tfidf_baseline_<time>.json

The rows are KLUE YNAT (Park et al., KLUE, 2021), CC BY-SA 4.0.
"""

from __future__ import annotations

import time
from typing import Any

import common
from sklearn.metrics import f1_score

from ynat_ray.linear import C, classifier, tfidf_vectorizer, yardstick

__all__ = ["C", "C_GRID", "classifier", "macro_f1", "tfidf_vectorizer", "yardstick"]
C_GRID = (1.0, 3.0, 10.0, 30.0)


def macro_f1(gold: Any, predicted: Any) -> float:
    return float(f1_score(gold, predicted, average="macro"))


def main() -> None:
    from ynat_ray.data.sources import embedded_split

    train, validation, test = (embedded_split(name) for name in ("train", "validation", "test"))
    started = time.perf_counter()
    vectorizer = tfidf_vectorizer()  # fitted once; each C refits only the classifier
    x_train = vectorizer.fit_transform(train["title"])
    x_val, x_test = vectorizer.transform(validation["title"]), vectorizer.transform(test["title"])
    scores = {c: macro_f1(validation["label"], classifier(c).fit(x_train, train["label"]).predict(x_val)) for c in C_GRID}
    print("validation macro-F1 by C: " + ", ".join(f"C={c:g} {f1:.4f}" for c, f1 in scores.items()))
    best = max(scores, key=scores.get)
    if best != C:
        print(f"warning: C={best:g} now scores best on validation, not the yardstick's C={C:g} (the figures in docs/ use C={C:g})")
    test_f1 = macro_f1(test["label"], classifier().fit(x_train, train["label"]).predict(x_test))
    result = {
        "features": "char_wb 1-3 grams, sublinear tf, min_df 2",
        "train_rows": len(train), "validation_macro_f1_by_C": scores, "C": C,
        "test_rows": len(test), "test_macro_f1": test_f1, "seconds": time.perf_counter() - started,
    }  # fmt: skip
    common.write_results("tfidf_baseline", result)
    print(f"char TF-IDF + logistic regression: embedded test macro-F1 {test_f1:.3f} (C={C:g}, chosen on validation)")


if __name__ == "__main__":
    main()
