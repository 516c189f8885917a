"""The training engine: DeepSpeed ZeRO, EMA, exact resume, preemption, NaN guard, metrics.

A task (pretraining, fine-tuning, segmentation) supplies the model, the loss of a micro-batch, the batch
source and optionally parameter groups (`nepa.engine.trainer.Task`); `Trainer.fit()` does the rest and
returns the process exit status: 0, `EXIT_REQUEUE` (checkpointed on a preemption signal) or
`EXIT_NONFINITE` (stopped on a non-finite loss or gradient norm).
"""

import os

import torch

# DeepSpeed picks its accelerator as it is imported, and on a host without CUDA it probes and logs a warning
# line ("Setting accelerator to CPU...") on every verb's --help and run. Naming the device nepa trains on skips
# the probe; the variable is set for the import only, so that a SLURM job submitted from here probes its own
# node (nepa.engine.distributed.use_accelerator then sets what nepa uses).
_given = os.environ.get("DS_ACCELERATOR")
os.environ["DS_ACCELERATOR"] = _given or ("cuda" if torch.cuda.is_available() else "cpu")
try:
    import deepspeed  # noqa: F401
finally:
    if _given is None:
        del os.environ["DS_ACCELERATOR"]
