"""params.yaml, typed and validated: the one source every stage, Snakemake rule and DVC stage reads.

Resolution, later wins:
  1. the defaults below;
  2. the preset (nepa/presets.py): at `scale: embedded` the embedded default's schedule (Fashion-MNIST, tiny
     model, CPU, minutes), at `scale: full` the full-scale recipe of `recipe` (paper | official) for the model
     size; Table 1's schedule for its variants; the knobs where paper and official code disagree (docs/paper.md);
  3. params.yaml (or the mapping given), where a key is not `preset`;
  4. the ablation `variant` (nepa/variants.py), which defines the experiment;
  5. `--set section.key=value` on the command line (Snakemake: `--config`), and `--size`.
An unknown key or a wrong type is one line naming the key and where it was set: the file and line, `--set` or
`--config` (exit 2).
"""

from __future__ import annotations

import argparse
import copy
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from nepa import layout
from nepa.batch import TRAINED, stage_batch
from nepa.errors import UserError
from nepa.presets import EMBEDDED, ablation_schedule, full_scale, recipe_knobs
from nepa.variants import VARIANTS, default_ablations, pretraining_source
from nepa.verbs import STAGES


class ModelSize(NamedTuple):
    timm_name: str
    architecture: dict[str, Any]  # NepaConfig fields over its defaults (224 px, patch 14)


# The model sizes, once: what params, the CLI, the workflow and the timm registry (nepa.models) accept.
# B and L are the paper's ViT-B/14 and ViT-L/14; tiny and small are for CPU runs.
SIZES: dict[str, ModelSize] = {
    "tiny": ModelSize(
        "nepa_tiny_patch4_32",
        # 96 wide: three times the images per CPU-second of 192, which buys the embedded default its pretraining
        dict(img_size=32, patch_size=4, embed_dim=96, depth=6, num_heads=3, mlp_hidden_dim=384),
    ),
    "small": ModelSize("nepa_small_patch14_224", dict(embed_dim=384, depth=12, num_heads=6, mlp_hidden_dim=1536)),
    "base": ModelSize("nepa_base_patch14_224", dict(embed_dim=768, depth=12, num_heads=12, mlp_hidden_dim=3072)),
    "large": ModelSize("nepa_large_patch14_224", dict(embed_dim=1024, depth=24, num_heads=16, mlp_hidden_dim=4096)),
}
Size = Literal[*SIZES]  # type: ignore[valid-type]

Fraction = Annotated[float, Field(ge=0, lt=1)]  # a rate or decay in [0, 1)
UnitInterval = Annotated[float, Field(gt=0, le=1)]  # a share or multiplier in (0, 1]
# A key that changes how a run is observed, stopped or held in memory, not its weights: a checkpoint resumes
# across a change of it (nepa.engine.checkpoint.resume_key leaves these out).
OPERATIONAL = Field(json_schema_extra={"operational": True})


def operational_keys(section: BaseModel) -> set[str]:
    """The section's OPERATIONAL keys."""
    marker = OPERATIONAL.json_schema_extra
    return {name for name, f in type(section).model_fields.items() if f.json_schema_extra == marker}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DataParams(Section):
    root: str = "data"  # prepared shards and the embedded raw layouts live below this folder
    imagenet_src: str | None = None  # full scale: ImageNet-1K as held: tree, tars, Kaggle, HF (docs/datasets.md)
    ade20k_src: str | None = None  # full scale: the ADEChallengeData2016 folder or zip, or HF scene_parse_150
    # ImageNet class folders / ClassLabel names that are not synset ids: `standard` (0..999, the standard index)
    # or a JSON file mapping each to its synset id (nepa/data/imagenet_forms.py); unset: they are refused
    class_index: str | None = None
    fashion_mnist_dir: str = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
    embedded_image_size: PositiveInt = 32  # Fashion-MNIST 28x28 padded into an ImageNet-style RGB image
    embedded_scene_size: PositiveInt = 64  # ADE20K-style canvas holding 2-4 Fashion-MNIST items
    embedded_images: tuple[PositiveInt, PositiveInt] = (60000, 10000)  # (train, val): the first of FMNIST train/t10k
    embedded_scenes: tuple[PositiveInt, PositiveInt] = (2000, 500)  # (training, validation) scenes
    images_per_shard: PositiveInt = 1000  # ImageNet: 1282 train shards of ~110 MB (nepa/data/shards.py says why)
    reencode_max_side: PositiveInt | None = None  # re-encode images whose long side is larger (off by default)
    skip_bad: bool = False  # record unreadable files in the manifest instead of stopping
    workers: NonNegativeInt = 0  # 0: every core
    verify_shards: bool = True  # loaders check every shard's sha256 once per process (minutes at full scale)
    # pretrain/finetune JPEG decoding (nepa/data/loaders.py): auto = gpu on CUDA hosts, else cpu (libjpeg-turbo);
    # gpu = nvJPEG batches on the device (pretrain; finetune uses cpu); pil = the official PIL pipeline
    decode: Literal["auto", "cpu", "gpu", "pil"] = "auto"


class ModelParams(Section):
    size: Size = "tiny"
    mlp: Literal["swiglu", "gelu"] = "swiglu"
    qk_norm: bool = True
    qk_norm_affine: bool = False
    layerscale: bool = True
    rope: bool = True
    rope_rescale: Annotated[float, Field(ge=1)] | None = 2.0  # training-time RoPE coordinate rescale in [1/r, r]

    @property
    def timm_name(self) -> str:
        return SIZES[self.size].timm_name

    def architecture(self) -> dict[str, Any]:
        """NepaConfig fields these knobs set, over the registered size's defaults."""
        width = SIZES[self.size].architecture["embed_dim"]
        # The paper gives no SwiGLU ratio: 2/3 of the GeLU width keeps the parameter count (LLaMA's rule).
        swiglu = dict(mlp_gated=True, mlp_act="silu", mlp_hidden_dim=64 * -(-8 * width // 3 // 64))
        return dict(
            **(swiglu if self.mlp == "swiglu" else dict(mlp_gated=False, mlp_act="gelu")),
            qk_norm=self.qk_norm,
            qk_norm_affine=self.qk_norm_affine,
            layerscale_init=1e-5 if self.layerscale else None,
            rope=self.rope,
            rope_rescale=self.rope_rescale,
        )


class Objective(Section):
    """The objective's switches (nepa/objectives.py), the paper's ablations of Table 1a and 1c."""

    shift: bool = True  # predict the next embedding, or the same position ("no AR shift")
    causal: bool = True  # causal attention mask, or bidirectional
    stop_grad: bool = True  # detach targets, or let gradients flow into them (the loss collapses to -1)
    mask_ratio: Fraction = 0.0  # replace this share of input patch embeddings by a learned mask token


def linear_scaled_lr(base_lr: float, global_batch: int) -> float:
    """MAE's and the paper's rule: a batch of `global_batch` trains at base_lr x global_batch / 256."""
    return base_lr * global_batch / 256


class TrainingParams(Section):
    """What every training stage (pretrain, finetune, segment) gives the engine (nepa/engine/trainer.py).

    The defaults are fine-tuning's; the other stages override theirs.
    """

    global_batch: PositiveInt = 256
    micro_batch: PositiveInt = 128  # per process and step; gradient accumulation fills the global batch
    betas: tuple[Fraction, Fraction] = (0.9, 0.999)
    weight_decay: NonNegativeFloat = 0.05
    drop_path: Fraction = 0.1
    grad_clip: PositiveFloat | None = None
    zero_stage: Literal[0, 1, 2] = 2  # not 3 downstream: the evaluation reads whole weights
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    checkpoint_every: Annotated[PositiveInt, OPERATIONAL] = 200  # optimizer steps
    keep_last: Annotated[PositiveInt, OPERATIONAL] = 2
    log_every: Annotated[PositiveInt, OPERATIONAL] = 10
    num_workers: Annotated[NonNegativeInt, OPERATIONAL] = 2
    # Gradient checkpointing: blocks keep only their input and recompute the rest in the backward pass (ViT-B on
    # CPU: results/grad_checkpointing.md). The same gradients bit for bit, so a run that ran out of memory resumes
    # with it switched on.
    grad_checkpointing: Annotated[bool, OPERATIONAL] = False


class EpochTrainingParams(TrainingParams):
    """A stage scheduled in epochs (the segmentation recipe counts iterations instead)."""

    epochs: PositiveFloat = 10
    warmup_epochs: NonNegativeFloat = 1
    max_steps: Annotated[PositiveInt | None, OPERATIONAL] = None  # stop early; the schedule still spans `epochs`
    base_lr: NonNegativeFloat = 1e-3  # lr = base_lr * global_batch / 256; 0: a control run (initial weights)

    @property
    def lr(self) -> float:
        """The peak lr the stage trains at (the engine is handed it as it is)."""
        return linear_scaled_lr(self.base_lr, self.global_batch)


class PretrainParams(EpochTrainingParams):
    epochs: PositiveFloat = 20
    warmup_epochs: NonNegativeFloat = 2
    base_lr: NonNegativeFloat = 3e-4
    betas: tuple[Fraction, Fraction] = (0.9, 0.95)
    grad_clip: PositiveFloat | None = 1.0
    ema_decay: Fraction = 0.999
    drop_path: Fraction = 0.0
    zero_stage: Literal[0, 1, 2, 3] = 2
    crop_scale: tuple[UnitInterval, UnitInterval] = (0.08, 1.0)


class FinetuneParams(EpochTrainingParams):
    # micro_batch: even where Mixup/CutMix is on (it pairs a batch with its reverse)
    layer_decay: UnitInterval = 0.35  # lr of layer l: decay**(L - l); blocks are layers 1..depth, the head L
    layer_decay_ramp: bool = True  # paper: the decay rate rises linearly to 1.0 over training
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"  # RandAugment(9, 0.5), timm notation
    reprob: Annotated[float, Field(ge=0, le=1)] = 0.25
    crop_scale: tuple[UnitInterval, UnitInterval] = (0.08, 1.0)  # RandomResizedCrop's area range (timm's default)
    mixup: NonNegativeFloat = 0.8  # Beta(alpha, alpha) of Mixup; 0: off
    cutmix: NonNegativeFloat = 1.0
    label_smoothing: Fraction = 0.1
    freeze_patch_embed: bool = True
    attention: Literal["bidirectional", "causal"] = "bidirectional"
    pooling: Literal["mean", "last"] = "mean"
    # learnable QK-Norm scales from fine-tuning on (the official fine-tune configs); a backbone pretrained with
    # them (model.qk_norm_affine) keeps them either way
    qk_norm_affine: bool = False
    ema_decay: Fraction | None = 0.999
    # fixed before any run
    report: Annotated[Literal["ema_final", "online_final", "max_final"], OPERATIONAL] = "ema_final"
    eval_crop_ratio: UnitInterval = 0.875  # resize 256 -> crop 224


class ProbeParams(Section):
    epochs: PositiveFloat = 20
    global_batch: PositiveInt = 256  # also the feature-extraction batch
    base_lr: NonNegativeFloat = 0.1  # SGD lr = base_lr * global_batch / 256, cosine to 0
    weight_decay: NonNegativeFloat = 0.0
    poolings: Annotated[tuple[Literal["last", "mean"], ...], Field(min_length=1)] = ("last", "mean")
    num_workers: NonNegativeInt = 2

    @property
    def lr(self) -> float:
        return linear_scaled_lr(self.base_lr, self.global_batch)


class SegmentParams(TrainingParams):
    iterations: PositiveInt = 2000  # optimizer steps
    warmup_iterations: NonNegativeInt = 100
    global_batch: PositiveInt = 16
    micro_batch: Annotated[int, Field(ge=2)] = 16  # per process and step; at least 2 (BatchNorm in the head)
    crop: PositiveInt = 64  # full scale 512, padded up to a multiple of the patch inside the model (518 at patch 14)
    lr: NonNegativeFloat = 1e-4  # the peak lr itself, as mmseg configs give it (not scaled by the batch)
    layer_decay: UnitInterval = 0.65
    taps: tuple[NonNegativeInt, ...] | None = None  # 0-based blocks; None: d/3, d/2, 2d/3, d (1-based)
    channels: PositiveInt = 128  # UperNet channels (512 at full scale)
    num_classes: PositiveInt | None = None  # None: the prepared shards' class count (150 for ADE20K)
    # slide: mmseg's sliding-window protocol (full scale), with this stride (mmseg's ADE20K: crop 512, stride 341)
    eval_mode: Annotated[Literal["whole", "slide"], OPERATIONAL] = "whole"
    eval_stride: Annotated[PositiveInt, OPERATIONAL] = 341
    checkpoint_every: Annotated[PositiveInt, OPERATIONAL] = 500


class SlurmParams(Section):
    """What one stage's SLURM job asks for (launcher.kind: submitit; nepa/launch.py, docs/slurm.md)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    nodes: PositiveInt = 1
    gpus_per_node: NonNegativeInt = 0  # one task per GPU; 0: launcher.processes tasks per node on CPU
    cpus_per_task: PositiveInt = 2
    mem_gb: PositiveInt = 8  # per node
    time_min: PositiveInt = 60
    signal_delay_s: NonNegativeInt = 120  # SLURM sends the preemption signal this long before the time limit
    max_timeouts: NonNegativeInt = 3  # requeues of a stage that reaches time_min (preemptions do not count)
    # Run inside a container: `python` is the command that starts Python in the job (Apptainer:
    # "apptainer exec --nv nepa.sif python"); `srun_args` go to the job's srun (pyxis: "--container-image=...").
    python: str | None = None  # None: the interpreter that submits
    srun_args: tuple[str, ...] = ()
    setup: tuple[str, ...] = ()  # shell lines before srun, e.g. "module load cuda/12.4"
    extra_sbatch: dict[str, str | int | bool] = Field(default_factory=dict)  # {exclusive: true} -> --exclusive


class LauncherParams(Section):
    """Where a stage verb runs. `local`: here. `submitit`: the verb submits itself as a SLURM job with
    `slurm` (or its `stages` entry), waits for it, streams its log and exits with its status (nepa/launch.py).

    `stages` lists only what a stage needs beyond `slurm`, e.g. {pretrain: {gpus_per_node: 8, time_min: 4320}};
    each entry is resolved over `slurm` here, so `nepa params` shows what every listed stage gets.
    """

    kind: Literal["local", "submitit"] = "local"
    processes: PositiveInt = 1  # processes per node without GPUs: here (local) or SLURM tasks (slurm.gpus_per_node 0)
    # How long the processes of a multi-process stage wait for each other at the start before giving up with one
    # line (nepa/engine/distributed.py); torchrun's join timeout. Cover the start-up skew of your nodes.
    rendezvous_timeout_s: PositiveInt = 600
    folder: str = "runs/slurm"  # submitit job folders: FOLDER/VERB/JOBID/ (sbatch file, logs, results)
    slurm: SlurmParams = SlurmParams()
    stages: dict[str, SlurmParams] = Field(default_factory=dict)  # verb -> its resources (see above)

    @model_validator(mode="before")
    @classmethod
    def _stages_over_slurm(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
            return data
        base = data.get("slurm", {})
        base = base.model_dump() if isinstance(base, SlurmParams) else base
        if not isinstance(base, dict):
            return data  # validation reports the bad `slurm`
        stages = {verb: merge(base, over) if isinstance(over, dict) else over for verb, over in data["stages"].items()}
        return {**data, "stages": stages}

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, stages: dict[str, SlurmParams]) -> dict[str, SlurmParams]:
        unknown = sorted(set(stages) - STAGES)
        if unknown:
            raise ValueError(f"{unknown} are not stage verbs; expected some of {sorted(STAGES)}")
        return stages

    def resources(self, verb: str) -> SlurmParams:
        return self.stages.get(verb, self.slurm)

    def tasks(self, verb: str) -> int:
        """Processes of the verb's SLURM job: one per GPU, or `processes` per node on CPU."""
        r = self.resources(verb)
        return r.nodes * (r.gpus_per_node or self.processes)


class Params(Section):
    recipe: Literal["paper", "official"] = "paper"
    scale: Literal["embedded", "full"] = "embedded"
    variant: str = "nepa"  # an ablation from nepa/variants.py; "nepa" is the method itself
    sizes: tuple[Size, ...] = ("tiny",)  # model sizes the DAG runs; a stage runs model.size
    variants: tuple[str, ...] = ("nepa",)  # variants the DAG runs for every size (the report's rows)
    ablation_variants: tuple[str, ...] = default_ablations()  # what `snakemake ablations` runs (Table 1, appendix)
    seed: int = 0
    # Seeds the DAG runs each run of a target with, each in its own folder {size}-{variant}-s{seed} (the seed is
    # recorded in its metrics.json); empty: `seed` alone, in {size}-{variant}. `seeds` for the default target,
    # `ablation_seeds` for `snakemake ablations`.
    seeds: tuple[NonNegativeInt, ...] = ()
    ablation_seeds: tuple[NonNegativeInt, ...] = ()
    runs: str = "runs"  # stage outputs: checkpoints, exports, metrics
    # DVC remote for data and checkpoints: a folder (relative: to the params file's folder) or any DVC URL;
    # nepa commands keep .dvc/config on it (nepa/pipeline.py follow_dvc_remote)
    dvc_remote: Annotated[str, Field(min_length=1)] = "../nepa-dvc-storage"
    results: str = "results"  # report and figures
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    objective: Objective = Objective()
    pretrain: PretrainParams = PretrainParams()
    finetune: FinetuneParams = FinetuneParams()
    probe: ProbeParams = ProbeParams()
    segment: SegmentParams = SegmentParams()
    launcher: LauncherParams = LauncherParams()
    # The training stages whose micro_batch params.yaml or --set gives: used as given (nepa/batch.py), where the
    # recipe's is an upper bound. Known to load_params only, which hands it to validation.
    _pinned: frozenset[str] = PrivateAttr(default=frozenset())

    @property
    def pinned_micro_batches(self) -> frozenset[str]:
        return self._pinned

    @property
    def seeded(self) -> bool:
        """Runs are per seed: their folders name it."""
        return bool(self.seeds or self.ablation_seeds)

    def run_of(self, variant: str) -> str:
        """Folder name of the run of `variant` at this size and seed (nepa/layout.py)."""
        return layout.run_name(self.model.size, variant, self.seed if self.seeded else None)

    @property
    def run_name(self) -> str:
        """Folder name of this configuration's runs: size, variant (and seed, where runs are per seed)."""
        return self.run_of(self.variant)

    @property
    def pretrained_run(self) -> str:
        """The run whose pretraining and export this run's downstream stages start from: its own, or for a
        fine-tune-only variant its baseline's (nepa/variants.py)."""
        return self.run_of(pretraining_source(self.variant, self.scale == "full"))

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> Params:
        """Checks across keys; each names the keys and the fix."""
        f = self.finetune
        if f.report != "online_final" and f.ema_decay is None:
            raise ValueError(f"finetune.report is {f.report} but finetune.ema_decay is off; set one of them")
        self._pinned = frozenset((info.context or {}).get("pinned_micro_batches", ()))
        for stage in TRAINED:  # what holds on any number of processes: one (the rest: each stage's own count)
            stage_batch(self, stage, 1)
        return self


# ---- loading ----------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-3` as a string; params are YAML 1.2-style here, so it is a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$|^[-+]?\d[\d_]*\.\d*$|^[-+]?\.\d+$"),
    list("-+0123456789."),
)


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Nested dict merge, `over` wins; neither input is changed."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def flat(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as {dotted key: value}, the inverse of parse_set (an empty mapping is a value)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            out |= flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def parse_set(assignment: str, source: str = "--set") -> dict[str, Any]:
    """`pretrain.epochs=5` -> {"pretrain": {"epochs": 5}}, the value parsed as YAML."""
    key, sep, value = assignment.partition("=")
    if not sep or not key:
        raise UserError(f"{source} {assignment!r}: expected section.key=value, e.g. {source} pretrain.epochs=5")
    out: dict[str, Any] = {}
    node = out
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = yaml.load(value, Loader=_Loader)
    return out


def _lists_to_tuples(value: Any) -> Any:
    """YAML has no tuples; strict validation wants them for fixed-length fields."""
    if isinstance(value, dict):
        return {k: _lists_to_tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_lists_to_tuples(v) for v in value)
    return value


class _Layer(NamedTuple):
    """One source of params: its name in error lines, its data and, for a file, its text (for line numbers)."""

    name: str
    data: dict[str, Any]
    text: str | None = None

    def has(self, key: tuple[str | int, ...]) -> bool:
        """Whether the layer sets `key` (or a value that holds it, e.g. a whole list)."""
        node: Any = self.data
        for part in key:
            if not isinstance(node, dict):
                return True
            if part not in node:
                return False
            node = node[part]
        return True

    def where(self, key: tuple[str | int, ...]) -> str:
        """The layer's name, with the line of `key` where the layer is a file."""
        line = _line_of(self.text, key) if self.text is not None else None
        return f"{self.name}:{line}" if line else self.name


def _line_of(text: str, key: tuple[str | int, ...]) -> int | None:
    """The line of `key` (of its deepest part present) in a YAML document, or None."""
    node, line = yaml.compose(text, Loader=_Loader), None
    for part in key:
        if not isinstance(node, yaml.MappingNode):
            break
        found = next(((k, v) for k, v in node.value if k.value == part), None)
        if found is None:
            break
        line, node = found[0].start_mark.line + 1, found[1]
    return line


def _one_line(error: ValidationError, layers: list[_Layer]) -> str:
    """A validation error as one line, labelled with the layer its key came from (the last that set it: --set
    over params.yaml over the preset); a check across keys names its keys, and is labelled by the last of those."""
    first = error.errors()[0]
    loc = tuple(first["loc"])
    key = ".".join(str(p) for p in loc)
    message = first["ctx"]["error"] if first["type"] == "value_error" else first["msg"]
    keys = [loc] if loc else [tuple(k.split(".")) for k in re.findall(r"\b[a-z_]+(?:\.[a-z_]+)+\b", str(message))]
    # the user's layers (params, the variant, --set): a preset's value is checked with what the user set beside it
    source = next((layer for layer in reversed(layers[1:]) for k in keys if layer.has(k)), layers[1])
    where = source.where(keys[0]) if keys else source.name
    if first["type"] == "extra_forbidden":
        return f"{where}: unknown key {key!r}; see the documented keys in params.yaml"
    # params.yaml:12: pretrain.epochs: ... | --set pretrain.epochs: ... | a check across keys: --set: ...
    head = where if not key else f"{where} {key}" if where.startswith("--") else f"{where}: {key}"
    if first["type"] == "value_error":  # a validator's message; one across keys (no key) names the keys itself
        return f"{head}: {message}"
    return f"{head}: {message} (got {first.get('input')!r})"


# The value of a key that the preset decides: params.yaml lists every key, with `preset` where nepa/presets.py may
# set it (by scale, recipe, size, Table 1 schedule); any other value is the user's and wins over the preset.
PRESET = "preset"


def without_presets(data: dict[str, Any]) -> dict[str, Any]:
    """The mapping without its PRESET values: what the user set."""
    return {
        key: without_presets(value) if isinstance(value, dict) else value
        for key, value in data.items()
        if value != PRESET
    }


def preset_layer(recipe: str, scale: str, size: str, variant: str, slurm: dict[str, Any]) -> dict[str, Any]:
    """What nepa/presets.py sets beneath params.yaml: the scale's recipe (embedded, or the full-scale recipe of
    `recipe` for `size`, its SLURM resources over the user's launcher.slurm), Table 1's schedule for its variants,
    and the knobs where the paper and the official code disagree."""
    layer = EMBEDDED if scale == "embedded" else full_scale(recipe, size, slurm) if scale == "full" else {}
    if table := VARIANTS[variant].schedule:  # Table 1's own schedule, at either scale
        layer = merge(layer, ablation_schedule(table, scale))
    return merge(layer, recipe_knobs(recipe, size))


def _read(path: Path) -> tuple[dict[str, Any], str]:
    if not path.is_file():
        raise UserError(f"{path}: params file not found; run from the repository root or pass --params PATH")
    text = path.read_text()
    try:
        data = yaml.load(text, Loader=_Loader) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{mark.line + 1}:" if mark else ""
        raise UserError(f"{path}:{where} not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of sections at the top level")
    return data, text


def load_params(
    source: str | Path | Mapping[str, Any] = "params.yaml",
    overrides: Sequence[str] = (),
    size: str | None = None,
    overrides_from: str = "--set",
) -> Params:
    """Resolve params (see the module doc). `source`: a params file, or its data (named `params` in errors);
    `overrides`: `section.key=value` assignments, from `overrides_from` (--set, or Snakemake's --config);
    `size`: the model size (default: the params')."""
    if isinstance(source, Mapping):
        file = _Layer("params", without_presets(dict(source)))
    else:
        data, text = _read(Path(source))
        file = _Layer(str(source), without_presets(data), text)
    cli: dict[str, Any] = {}
    for assignment in overrides:
        cli = merge(cli, parse_set(assignment, overrides_from))
    if size:
        cli = merge(cli, {"model": {"size": size}})
    given = _Layer(overrides_from, cli)
    top = merge(file.data, cli)
    recipe, scale, variant = top.get("recipe", "paper"), top.get("scale", "embedded"), top.get("variant", "nepa")
    size = top.get("model", {}).get("size") or "tiny"
    for key in ("variant", "variants", "ablation_variants"):
        names = [variant] if key == "variant" else top.get(key, [])
        if unknown := [name for name in names if name not in VARIANTS]:
            where = (given if given.has((key,)) else file).where((key,))
            raise UserError(f"{where}: variant {unknown[0]!r} is not one of {sorted(VARIANTS)}")
    try:
        preset = preset_layer(recipe, scale, size, variant, top.get("launcher", {}).get("slurm", {}))
    except UserError as e:
        raise UserError(f"{file.name}: {e}") from None
    layers = [_Layer("the preset", preset), file, _Layer(f"variant {variant}", VARIANTS[variant].overrides), given]
    resolved: dict[str, Any] = {}
    for layer in layers:
        resolved = merge(resolved, layer.data)
    pinned = [stage for stage in TRAINED if "micro_batch" in (top.get(stage) or {})]
    try:
        params = Params.model_validate(_lists_to_tuples(resolved), context={"pinned_micro_batches": pinned})
    except ValidationError as e:
        raise UserError(_one_line(e, layers)) from None
    if params.scale == "full" and params.data.imagenet_src is None:
        raise UserError(f"{file.name}: scale is full but data.imagenet_src is not set; point it at your ImageNet")
    return params


# ---- on the command line --------------------------------------------------------------------------


def add_params_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of every verb that reads params: --params, --set, --size, --variant."""
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one param, e.g. --set pretrain.epochs=5 (repeatable)",
    )
    parser.add_argument("--size", choices=list(SIZES), help="model size (default: params model.size)")
    parser.add_argument(  # not argparse's choices: an unknown name is params' one line, like params.yaml's
        "--variant",
        metavar="VARIANT",
        help=f"the method (nepa) or a variant of nepa/variants.py: {', '.join(VARIANTS)} (default: params variant)",
    )


def params_from_arguments(args: argparse.Namespace) -> Params:
    """The params that add_params_arguments' arguments ask for."""
    if args.variant and args.variant not in VARIANTS:  # labelled by its option, not by the --set it becomes
        raise UserError(f"--variant: variant {args.variant!r} is not one of {sorted(VARIANTS)}")
    overrides = [*args.overrides, *([f"variant={args.variant}"] if args.variant else [])]
    return load_params(args.params, tuple(overrides), size=args.size)


def main(args: argparse.Namespace, params: Params) -> int:
    """`nepa params`: print the fully resolved params as YAML, to see what a stage will run with."""
    print(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False), end="")
    return 0
