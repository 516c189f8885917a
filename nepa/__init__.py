"""nepa: a reproducibility pipeline for Next-Embedding Prediction (NEPA) vision pretraining."""

__version__ = "0.1.0"
# The published image (Dockerfile), named once: the Snakefile's container directive and the release
# workflow read it from here.
IMAGE = f"ghcr.io/nepa-repro/nepa:{__version__}"
