"""The training engine: DeepSpeed ZeRO, EMA, exact resume, preemption, NaN guard, metrics.

A task (pretraining, fine-tuning, segmentation) supplies the model, the loss of a micro-batch, the batch
source and optionally parameter groups (`nepa.engine.trainer.Task`); `Trainer.fit()` does the rest and
returns the process exit status: 0, `EXIT_REQUEUE` (checkpointed on a preemption signal) or
`EXIT_NONFINITE` (stopped on a non-finite loss or gradient norm).
"""
