"""params.yaml, typed and validated: the one source every stage, Snakemake rule and DVC stage reads.

Resolution, later wins:
  1. the defaults below;
  2. at `scale: embedded`, the embedded default's schedule (Fashion-MNIST, tiny model, CPU, minutes), and at
     `scale: full`, the full-scale recipe of `recipe` (paper | official) for the model size (nepa/presets.py);
  3. the model knobs of `recipe` where paper and official code disagree (docs/paper.md, "Decisions");
  4. what params.yaml says;
  4b. the NEPA_LAUNCHER environment variable, if set: launcher.kind (local | submitit), so that a Snakemake
      profile or a cluster login shell sends every stage to SLURM without editing params.yaml;
  5. the ablation `variant` (nepa/variants.py), which defines the experiment;
  6. `--set section.key=value` on the command line.
An unknown key or a wrong type is one line naming the key and the file (exit 2).
"""

from __future__ import annotations

import argparse
import copy
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, get_args

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
        """Folder name of the run of `variant` at this size and seed."""
        return f"{self.model.size}-{variant}" + (f"-s{self.seed}" if self.seeded else "")

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


def parse_set(assignment: str) -> dict[str, Any]:
    """`pretrain.epochs=5` -> {"pretrain": {"epochs": 5}}, the value parsed as YAML."""
    key, sep, value = assignment.partition("=")
    if not sep or not key:
        raise UserError(f"--set {assignment!r}: expected section.key=value, e.g. --set pretrain.epochs=5")
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


def _one_line(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key {key!r}; see the documented keys in params.yaml"
    if first["type"] == "value_error":  # a validator's message; one across keys (no key) names the keys itself
        return f"{source}: {key + ': ' if key else ''}{first['ctx']['error']}"
    return f"{source}: {key}: {first['msg']} (got {first.get('input')!r})"


def _launcher_from_env() -> dict[str, Any]:
    kind = os.environ.get("NEPA_LAUNCHER")
    if kind is None:
        return {}
    kinds = get_args(LauncherParams.model_fields["kind"].annotation)
    if kind not in kinds:
        raise UserError(f"NEPA_LAUNCHER={kind!r}: expected one of {', '.join(kinds)}")
    return {"launcher": {"kind": kind}}


def load_params(path: str | Path = "params.yaml", overrides: tuple[str, ...] = (), size: str | None = None) -> Params:
    """Resolve params.yaml (see the module doc); `size` selects the model size (default: the file's)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: params file not found; run from the repository root or pass --params PATH")
    try:
        user = yaml.load(path.read_text(), Loader=_Loader) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(user, dict):
        raise UserError(f"{path}: expected a mapping of sections at the top level")
    cli = {}
    for assignment in overrides:
        cli = merge(cli, parse_set(assignment))
    top = merge(user, cli)
    recipe, scale = top.get("recipe", "paper"), top.get("scale", "embedded")
    size = size or top.get("model", {}).get("size") or "tiny"
    variant = top.get("variant", "nepa")
    for name in [variant, *top.get("variants", []), *top.get("ablation_variants", [])]:
        if name not in VARIANTS:
            raise UserError(f"{path}: variant {name!r} is not one of {sorted(VARIANTS)}")
    layers: list[tuple[str, dict[str, Any]]] = []
    if scale == "embedded":
        layers.append(("embedded preset", EMBEDDED))
    if scale == "full":
        try:
            layers.append(("full-scale preset", full_scale(recipe, size, top.get("launcher", {}).get("slurm", {}))))
        except UserError as e:
            raise UserError(f"{path}: {e}") from None
    if table := VARIANTS[variant].schedule:  # Table 1's own schedule, at either scale
        layers.append(("ablation schedule", ablation_schedule(table, scale)))
    layers += [
        ("recipe preset", recipe_knobs(recipe, size)),
        (str(path), user),
        ("NEPA_LAUNCHER", _launcher_from_env()),
        (f"variant {variant}", VARIANTS[variant].overrides),
        ("--set", cli),
        ("--size", {"model": {"size": size}}),
    ]
    resolved: dict[str, Any] = {}
    for _, layer in layers:
        resolved = merge(resolved, layer)
    pinned = [stage for stage in TRAINED if "micro_batch" in (top.get(stage) or {})]
    try:
        params = Params.model_validate(_lists_to_tuples(resolved), context={"pinned_micro_batches": pinned})
    except ValidationError as e:
        raise UserError(_one_line(e, str(path))) from None
    if params.scale == "full" and params.data.imagenet_src is None:
        raise UserError(f"{path}: scale is full but data.imagenet_src is not set; point it at your ImageNet folder")
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
    parser.add_argument("--size", choices=list(SIZES), help="model size (default: params)")
    parser.add_argument("--variant", help="ablation variant from nepa/variants.py (default: params)")


def params_from_arguments(args: argparse.Namespace) -> Params:
    """The params that add_params_arguments' arguments ask for."""
    overrides = [*args.overrides, *([f"variant={args.variant}"] if args.variant else [])]
    return load_params(args.params, tuple(overrides), size=args.size)


def main(args: argparse.Namespace, params: Params) -> int:
    """`nepa params`: print the fully resolved params as YAML, to see what a stage will run with."""
    print(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False), end="")
    return 0
