"""params.yaml validation and the full-scale presets against the paper's recipes (docs/paper.md, quoted)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from nepa.cli import main as nepa_main
from nepa.config import PRESET, Params, SlurmParams, flat, load_params
from nepa.errors import UserError
from nepa.presets import ABLATION_STEPS, EMBEDDED, ablation_schedule, full_scale, recipe_knobs
from nepa.variants import VARIANTS

ROOT = Path(__file__).resolve().parents[1]


def full(tmp_path: Path, recipe: str, size: str, variant: str = "nepa"):
    path = tmp_path / "params.yaml"
    path.write_text(f"recipe: {recipe}\nscale: full\nvariant: {variant}\ndata: {{imagenet_src: /imagenet}}\n")
    return load_params(path, size=size)


@pytest.mark.parametrize("size", ["base", "large"])
def test_pretraining_recipe_is_the_papers(tmp_path: Path, size: str) -> None:
    p = full(tmp_path, "paper", size).pretrain
    # "AdamW β=(0.9, 0.95), wd 0.05 ... base lr 3e-4 × batch/256 (batch 4096 → 4.8e-3) ... 40 warm-up epochs,
    #  grad-norm clip 1.0 ... EMA of weights, decay 0.9999"
    assert p.betas == (0.9, 0.95) and p.weight_decay == 0.05 and p.grad_clip == 1.0 and p.ema_decay == 0.9999
    assert p.global_batch == 4096 and p.base_lr * p.global_batch / 256 == pytest.approx(4.8e-3)
    assert p.warmup_epochs == 40 and p.crop_scale == (0.08, 1.0)
    # "ViT-B 1600 epochs, ViT-L 800 epochs (paper; the official script says 1600)"
    assert p.epochs == {"base": 1600, "large": 800}[size]
    assert full(tmp_path, "official", size).pretrain.epochs == 1600


@pytest.mark.parametrize(
    ("size", "epochs", "layer_decay", "drop_path"), [("base", 100, 0.35, 0.1), ("large", 50, 0.60, 0.2)]
)
def test_finetuning_recipe_is_table_5(
    tmp_path: Path, size: str, epochs: int, layer_decay: float, drop_path: float
) -> None:
    f = full(tmp_path, "paper", size).finetune
    # "AdamW β=(0.9, 0.999), wd 0.05, base lr 1e-3 × batch/256, batch 1024, 100 epochs (B) / 50 (L), 5 warm-up
    #  epochs, cosine; layer-wise lr decay 0.35 (B) / 0.60 (L) rising linearly to 1.0 ... RandAugment(9, 0.5),
    #  label smoothing 0.1, mixup 0.8, cutmix 1.0, random erase 0.25, drop path 0.1 (B) / 0.2 (L); patch
    #  embedding frozen; bidirectional attention ... mean of the 256 patch tokens → LayerNorm → Linear"
    assert f.betas == (0.9, 0.999) and f.weight_decay == 0.05 and f.base_lr == 1e-3 and f.global_batch == 1024
    assert (f.epochs, f.warmup_epochs, f.layer_decay, f.drop_path) == (epochs, 5, layer_decay, drop_path)
    assert f.layer_decay_ramp and f.auto_augment == "rand-m9-mstd0.5-inc1"
    assert (f.label_smoothing, f.mixup, f.cutmix, f.reprob) == (0.1, 0.8, 1.0, 0.25)
    assert f.freeze_patch_embed and f.attention == "bidirectional" and f.pooling == "mean"


@pytest.mark.parametrize(("size", "layer_decay", "warmup"), [("base", 0.65, 20), ("large", 0.75, 30)])
def test_official_finetuning_recipe(tmp_path: Path, size: str, layer_decay: float, warmup: int) -> None:
    # "fixed 0.65/0.75 staggered warm-up 20/30 ep., 100 ep., B blr 1.5e-3"
    f = full(tmp_path, "official", size).finetune
    assert (f.layer_decay, f.layer_decay_ramp, f.warmup_epochs, f.epochs) == (layer_decay, False, warmup, 100)
    if size == "base":
        assert f.base_lr == 1.5e-3


def test_decisions_table(tmp_path: Path) -> None:
    # MLP: paper SwiGLU, official GeLU; QK-Norm affine: paper off, official learnable in the L-pretrain config
    assert full(tmp_path, "paper", "base").model.mlp == "swiglu"
    assert full(tmp_path, "official", "base").model.mlp == "gelu"
    assert not full(tmp_path, "paper", "large").model.qk_norm_affine
    assert full(tmp_path, "official", "large").model.qk_norm_affine


def test_model_sizes_are_the_papers() -> None:
    from nepa.models import MODEL_SIZES

    # "ViT-B 768 wide, 12 layers, 12 heads, MLP 3072; ViT-L 1024, 24, 16, MLP 4096", patch 14 at 224
    base, large = MODEL_SIZES["nepa_base_patch14_224"], MODEL_SIZES["nepa_large_patch14_224"]
    assert (base["embed_dim"], base["depth"], base["num_heads"], base["mlp_hidden_dim"]) == (768, 12, 12, 3072)
    assert (large["embed_dim"], large["depth"], large["num_heads"], large["mlp_hidden_dim"]) == (1024, 24, 16, 4096)


def test_ablations_run_at_table_1_scale(tmp_path: Path) -> None:
    # "Ablations, ViT-B, pretraining batch 2048 ... 1a, 50k steps ... 1b, 100k steps"
    # their own schedules: 1,281,167 // 2048 = 625 steps per epoch, the cosine ending at the last step
    p = full(tmp_path, "paper", "base", "no_causal")
    assert (p.pretrain.global_batch, p.pretrain.epochs, p.pretrain.max_steps) == (2048, 80, None)
    assert p.objective.causal is False and p.pretrain.epochs * (1_281_167 // 2048) == 50_000
    p = full(tmp_path, "paper", "base", "mask_40")
    assert (p.pretrain.epochs * 625, p.objective.mask_ratio) == (100_000, 0.4)
    assert full(tmp_path, "paper", "base", "no_stop_grad").objective.stop_grad is False
    assert "no_shift" in VARIANTS and "plain_vit" in VARIANTS


def test_the_repository_params_resolve() -> None:
    params = load_params(ROOT / "params.yaml")
    assert params.scale == "embedded" and params.model.size == "tiny"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("pretrain:\n  epoch: 3\n", "unknown key 'pretrain.epoch'"),
        ("pretrain:\n  epochs: many\n", "pretrain.epochs"),
        ("model:\n  size: huge\n", "model.size"),
        ("objective:\n  stop_grad: 'no'\n", "objective.stop_grad"),
        ("variant: nonsense\n", "variant 'nonsense'"),
        ("scale: full\nmodel: {size: base}\n", "data.imagenet_src"),
        ("scale: full\n", "model.size to base or large"),
        ("pretrain: [\n", "not valid YAML"),
    ],
)
def test_bad_params_are_one_line_naming_key_and_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, needle: str
) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    assert nepa_main(["params", "--params", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and str(path) in err and "\n" not in err and "Traceback" not in err


def test_set_overrides_and_scientific_notation(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("pretrain:\n  base_lr: 1e-3\n")
    params = load_params(path, ("pretrain.epochs=3", "objective.mask_ratio=0.4"))
    assert params.pretrain.base_lr == 1e-3 and params.pretrain.epochs == 3 and params.objective.mask_ratio == 0.4


def _preset_keys() -> set[str]:
    """Every key a preset beneath params.yaml may set (any scale, recipe, size, Table 1 schedule), and
    launcher.slurm's keys (the full-scale stage resources are resolved over them)."""
    layers = [EMBEDDED, *(ablation_schedule(t, s) for t in ABLATION_STEPS for s in ("embedded", "full"))]
    layers += [f(r, z) for f in (full_scale, recipe_knobs) for r in ("paper", "official") for z in ("base", "large")]
    layers += [recipe_knobs(r, "tiny") for r in ("paper", "official")]
    # launcher.stages and extra_sbatch are mappings of names, where params.yaml's {} adds nothing to the preset's
    keys = {key for layer in layers for key in flat(layer) if not key.startswith(("launcher.stages", "launcher.slurm"))}
    return keys | {f"launcher.slurm.{k}" for k in SlurmParams.model_fields if k != "extra_sbatch"}


def test_params_yaml_lists_every_key_and_marks_what_the_preset_decides() -> None:
    """Every documented key is in params.yaml (so that `dvc exp run -S key=value` needs no `+`), `preset` exactly
    where a preset may set it; every other value is the default: the file says nothing a minimal one does not."""
    listed = flat(yaml.load((ROOT / "params.yaml").read_text(), Loader=yaml.SafeLoader))
    assert listed.keys() == flat(Params().model_dump(mode="json")).keys()
    assert {key for key, value in listed.items() if value == PRESET} == _preset_keys()


@pytest.mark.parametrize(
    ("scale", "recipe", "size", "variant"),
    [("embedded", "paper", "tiny", "nepa"), ("embedded", "official", "small", "no_causal"),
     ("full", "paper", "base", "mask_40"), ("full", "official", "large", "ft_causal"),
     ("full", "paper", "large", "nepa")],
)  # fmt: skip
def test_the_full_params_yaml_resolves_as_a_minimal_one(
    tmp_path: Path, scale: str, recipe: str, size: str, variant: str
) -> None:
    """The presets still apply beneath every `preset`: switching scale, recipe or size in the full params.yaml
    gives what it gives in a file holding only those keys."""
    sets = (f"scale={scale}", f"recipe={recipe}", f"variant={variant}", "data.imagenet_src=/imagenet")
    minimal = tmp_path / "params.yaml"
    minimal.write_text("{}\n")
    assert load_params(ROOT / "params.yaml", sets, size=size) == load_params(minimal, sets, size=size)


def test_params_from_a_mapping_and_where_errors_come_from(tmp_path: Path) -> None:
    """load_params takes the params' data as well as their file; a bad value is labelled with where it was set:
    the file and its line, or --set (Snakemake's values: --config)."""
    assert load_params({"pretrain": {"epochs": 3, "base_lr": PRESET}}).pretrain.epochs == 3
    with pytest.raises(UserError, match=r"^params: pretrain.epochs: Input should be greater than 0"):
        load_params({"pretrain": {"epochs": 0}})
    path = tmp_path / "params.yaml"
    path.write_text("seed: 0\npretrain:\n  epochs: 5\n  micro_batch: 0\n")
    with pytest.raises(UserError, match=rf"^{re.escape(str(path))}:4: pretrain.micro_batch: Input should be"):
        load_params(path)
    with pytest.raises(UserError, match=r"^--set pretrain.epochs: Input should be greater than 0 \(got 0\)"):
        load_params(path, ("pretrain.epochs=0", "pretrain.micro_batch=64"))
    with pytest.raises(UserError, match=r"^--config: unknown key 'pretrain.epoch'"):
        load_params(path, ("pretrain.epoch=3", "pretrain.micro_batch=64"), overrides_from="--config")
