"""ynat-ray: fine-tune, evaluate, serve and batch-score a Korean news-topic classifier (KLUE YNAT) on Ray."""

__version__ = "0.1.0"
