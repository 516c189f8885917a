"""Checkpoints: atomic, pruned, with everything an exact resume needs.

    checkpoints/
      step_00000200/
        mp_rank_00_model_states.pt ...   DeepSpeed: model, optimizer, lr scheduler (torch pickles)
        ema.safetensors                  the full EMA (rank 0)
        rng-rank{r}.safetensors          each rank's python/numpy/torch generator states
        state.json                       step, data position (epoch, batch), wall time, world, run card
      latest                             the name of the newest complete checkpoint, written last

A checkpoint is written into `.partial/step_N/`, fsynced, then renamed into place; `latest` is replaced
atomically after the rename. A run killed at any moment leaves `latest` naming a complete checkpoint
(or absent), and whatever it left half-written or newer than `latest` is removed when the run resumes.
DeepSpeed's files are torch pickles: they are only ever read from the run's own folder; the files nepa
reads elsewhere (exported models) are safetensors.

Another number of processes: a checkpoint written by W processes resumes on W' (`Checkpoints.load`). Under
ZeRO 1-3 DeepSpeed's files hold each rank's partition of the fp32 weights and AdamW moments; they are merged
into DeepSpeed's universal checkpoint (`.universal/`, one folder per parameter, removed once loaded), from
which every new rank takes its partition. DeepSpeed's own tool was chosen over resharding the flat partitions
here: it handles the stages' layouts (and their padding) and resumed ZeRO 1 and 2, W=2 -> 1 and 1 -> 2, to
within float rounding; a resharder of our own would re-implement those layouts. The EMA is stored whole and
the schedule counts optimizer steps, so both carry over as they are. ZeRO-3 is refused (`elastic_stages`):
DeepSpeed 0.19.8's ZeRO-3 universal load gives every parameter group the first group's settings (weight
decay on the no-decay group) and, even with those put back, its first update after the load differs from an
uninterrupted run's (seen on a 1 -> 1 round trip), so the run would not be the one it continues.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from deepspeed import DeepSpeedEngine
from deepspeed.checkpoint import ds_to_universal
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor

from nepa.config import Params, operational_keys
from nepa.engine import rng
from nepa.engine.distributed import DistEnv, barrier
from nepa.engine.ema import Ema
from nepa.engine.faults import NO_FAULTS, Faults
from nepa.errors import UserError
from nepa.files import atomic_write_text, fsync
from nepa.models.weights import atomic_save_safetensors

LATEST = "latest"
PARTIAL = ".partial"
UNIVERSAL = ".universal"  # a checkpoint converted for another number of processes, while it is loaded
ELASTIC_STAGES = (0, 1, 2)  # ZeRO stages whose checkpoints resume on another number of processes (not 3: above)
EMA_FILE = "ema.safetensors"
STATE_FILE = "state.json"


@dataclasses.dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch: int = 0  # micro-batches of `epoch` this rank has consumed
    wall_s: float = 0.0  # training time so far, summed over resumes
    world: int = 1
    zero_stage: int = 0
    resume_key: str = ""  # TrainConfig.resume_key of the run that wrote it
    card: dict[str, str] = dataclasses.field(default_factory=dict)  # the task's provenance: params hash, data...


def resume_key(params: Params, sections: Sequence[str], *inputs: str) -> str:
    """Digest of what decides a run's weights: the seed, the params `sections` the stage reads, less their
    OPERATIONAL keys (those that only change how a run is observed or stopped), and the digests of its
    input files (data manifest, initial weights). A checkpoint written under another key is not resumed."""
    decisive = {}
    for name in sections:
        section = getattr(params, name)
        decisive[name] = section.model_dump(mode="json", exclude=operational_keys(section))
    return hashlib.sha256(json.dumps([params.seed, decisive, inputs], sort_keys=True).encode()).hexdigest()


def tag(step: int) -> str:
    return f"step_{step:08d}"


def _step_of(path: Path) -> int | None:
    name = path.name
    return int(name[5:]) if name.startswith("step_") and name[5:].isdigit() else None


def _write_error(folder: Path) -> OSError | None:
    """Why writing into `folder` fails (disk full, quota, permissions), found by writing a probe; None if it works.
    The half-written checkpoint stays in .partial/, which the next start removes; `latest` is untouched."""
    probe = folder / ".write-probe"
    try:
        with open(probe, "wb") as f:
            f.write(bytes(1 << 20))
            os.fsync(f.fileno())
    except OSError as e:
        return OSError(e.errno, e.strerror, str(folder))
    finally:
        probe.unlink(missing_ok=True)
    return None


def read_state(path: Path) -> TrainState:
    return TrainState(**json.loads((path / STATE_FILE).read_text()))


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint in `folder`, or None."""
    pointer = folder / LATEST
    if not pointer.is_file():
        return None
    path = folder / pointer.read_text().strip()
    if not (path / STATE_FILE).is_file():
        raise UserError(f"{pointer}: names {path.name}, not a complete checkpoint; remove {pointer} to restart")
    return path


class Checkpoints:
    def __init__(self, folder: Path, keep_last: int, env: DistEnv, faults: Faults = NO_FAULTS):
        self.folder = folder
        self.keep_last = max(1, keep_last)
        self.env = env
        self.faults = faults

    def latest(self) -> Path | None:
        return latest_checkpoint(self.folder)

    def tidy(self) -> None:
        """Remove what a killed run left: the partial folder and checkpoints newer than `latest` (rank 0)."""
        if self.env.is_main and self.folder.is_dir():
            latest = self.latest()
            newest = _step_of(latest) if latest else -1
            shutil.rmtree(self.folder / PARTIAL, ignore_errors=True)
            shutil.rmtree(self.folder / UNIVERSAL, ignore_errors=True)
            for path in self.folder.iterdir():
                if (step := _step_of(path)) is not None and step > newest:
                    shutil.rmtree(path)
        barrier()

    def save(self, engine: DeepSpeedEngine, ema: Ema | None, state: TrainState) -> Path:
        """Write the checkpoint of `state.step`; a collective call (every rank)."""
        name = tag(state.step)
        final, partial = self.folder / name, self.folder / PARTIAL
        if final.is_dir():  # already saved at this step (a resumed run signalled before its first step)
            return final
        if self.env.is_main:
            shutil.rmtree(partial / name, ignore_errors=True)
            (partial / name).mkdir(parents=True)
        barrier()
        try:
            engine.save_checkpoint(str(partial), tag=name, save_latest=False)
        except RuntimeError as e:  # torch.save reports a failed write without errno or file name
            if (cause := _write_error(partial / name)) is None:
                raise
            raise cause from e
        self.faults.in_checkpoint(state.step)
        ema_state = ema.state_dict() if ema is not None else None  # collective under ZeRO-3
        tensors, meta = rng.capture()
        atomic_save_safetensors(tensors, partial / name / f"rng-rank{self.env.rank}.safetensors", meta)
        if self.env.is_main:
            if ema_state is not None:
                atomic_save_safetensors(ema_state, partial / name / EMA_FILE, {"step": str(state.step)})
            (partial / name / STATE_FILE).write_text(json.dumps(dataclasses.asdict(state), indent=2) + "\n")
        barrier()
        if self.env.is_main:
            for path in [*(partial / name).iterdir(), partial / name]:
                fsync(path)
            os.replace(partial / name, final)
            atomic_write_text(self.folder / LATEST, name + "\n")  # also fsyncs the folder: the rename is durable
            self._prune()
            shutil.rmtree(partial)  # with the scripts DeepSpeed copies beside every save
        barrier()
        return final

    def _prune(self) -> None:
        steps = sorted((s, p) for p in self.folder.iterdir() if (s := _step_of(p)) is not None)
        for _, path in steps[: -self.keep_last]:
            shutil.rmtree(path)

    def load(self, engine: DeepSpeedEngine, ema: Ema | None, path: Path, seed: int) -> TrainState:
        """Restore model, optimizer, scheduler, EMA and this rank's generators from `path`.

        Written by another number of processes (see `elastic`), the ZeRO-partitioned state is first merged
        into DeepSpeed's universal checkpoint, which every rank then takes its new partition of; the engine
        must have been set up to load that (`deepspeed_config(universal=True)`). A rank that did not exist
        in the old run starts a fresh generator stream from (seed, rank, step).
        """
        state = read_state(path)
        source = path
        universal = state.world != self.env.world and state.zero_stage
        if universal:
            source = self._universal(path)
        loaded, _ = engine.load_checkpoint(str(source.parent), tag=source.name, load_lr_scheduler_states=True)
        if loaded is None:
            raise UserError(f"{path}: DeepSpeed could not load it; remove {self.folder / LATEST} to restart")
        if ema is not None:
            ema.load_state_dict(load_file(path / EMA_FILE))
        rng_file = path / f"rng-rank{self.env.rank}.safetensors"
        if rng_file.is_file():
            with safe_open(str(rng_file), framework="pt") as f:
                meta = f.metadata()
            rng.restore(load_file(rng_file), meta)
        else:
            rng.seed_all(rng.derived_seed(seed, self.env.rank, state.step))
        barrier()
        if self.env.is_main:
            shutil.rmtree(self.folder / UNIVERSAL, ignore_errors=True)
        return state

    def _universal(self, path: Path) -> Path:
        """DeepSpeed's universal checkpoint of `path` (every parameter's fp32 weights and optimizer moments,
        whole), made by rank 0 under checkpoints/.universal/ and removed once loaded; a collective call."""
        out = self.folder / UNIVERSAL / path.name
        if self.env.is_main:
            shutil.rmtree(out.parent, ignore_errors=True)
            args = argparse.Namespace(
                input_folder=str(path),
                output_folder=str(out),
                num_extract_workers=1,
                num_merge_workers=1,
                keep_temp_folder=False,
                strict=True,
                inject_missing_state=True,
            )
            progress = io.StringIO()  # its progress lines and bars, not the user's business
            with contextlib.redirect_stdout(progress), contextlib.redirect_stderr(progress):
                ds_to_universal.main(args)
        barrier()
        return out


def online_weights(path: Path) -> dict[str, Tensor]:
    """The online (optimizer's fp32) weights of a checkpoint folder of this run, by the task model's names.

    ZeRO 1-3 keep the fp32 weights partitioned in the optimizer files: zero_to_fp32 merges them (any number
    of ranks). Stage 0 keeps them whole in the model file, read with torch's weights-only loader (no objects).
    """
    if read_state(path).zero_stage:
        state = get_fp32_state_dict_from_zero_checkpoint(str(path.parent), tag=path.name)
    else:
        state = torch.load(path / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)["module"]
    prefix = "model."  # trainer.LossModule holds the task model as `model`
    return {k.removeprefix(prefix): v.float() for k, v in state.items() if k.startswith(prefix)}
