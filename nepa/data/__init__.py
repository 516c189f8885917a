"""Datasets: the embedded Fashion-MNIST layouts, versionable Parquet shards, and the PyTorch loaders over them.

Flow: `nepa prepare embedded` (raw folders) -> `nepa prepare imagenet|ade20k` (shards + manifest.json)
-> `nepa.data.loaders.make_loader` (batches for the engines).
"""
