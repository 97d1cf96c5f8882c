"""The linear yardstick: char n-gram TF-IDF + logistic regression, defined once.

`bench/tfidf_baseline.py` scores it against the offline default, and `ynat-ray train --teacher linear` distills
from it (`ynat_ray.distill`), so both mean the same model: char n-grams inside words (1-3), sublinear tf,
min_df 2, C = `C` (chosen on the embedded validation split; the bench script shows the grid).
"""

from __future__ import annotations

from typing import Any

C = 10.0
MAX_ITER = 3000  # lbfgs converges in well under this on every feature set of bench/linear_features.py


def tfidf_vectorizer(ngram_range: tuple[int, int] = (1, 3)) -> Any:
    """The yardstick's features: char n-grams inside words, sublinear tf (bench/linear_features.py varies the n-grams)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(analyzer="char_wb", ngram_range=ngram_range, sublinear_tf=True, min_df=2)


def classifier(c: float = C) -> Any:
    """The yardstick's classifier (bench/linear_features.py puts other features in front of it)."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=MAX_ITER)


def yardstick(c: float = C) -> Any:
    """Vectorizer + classifier (a scikit-learn Pipeline): `.fit(titles, labels)`, then `.predict_proba(titles)`."""
    from sklearn.pipeline import make_pipeline

    return make_pipeline(tfidf_vectorizer(), classifier(c))
