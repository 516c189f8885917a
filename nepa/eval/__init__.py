"""Downstream evaluation of NEPA backbones: classification fine-tuning, linear probe, semantic segmentation.

One verb per module (`finetune.py`, `probe.py`, `segment.py`); the parts they share are small modules of
their own (`stage.py`, `layer_decay.py`, `classify.py`, `upernet.py`, `miou.py`).
"""
