"""nepa: a reproducibility pipeline for Next-Embedding Prediction (NEPA) vision pretraining."""

__version__ = "0.1.0"
