"""The image users pull, built and run for real (slow: ~10 min; CI runs it).

The CPU variant of the Dockerfile is built with buildah (`--isolation chroot`, no daemon) on a Debian base
this test makes itself with debootstrap from the host's mirror (CI reaches no registry), the CPU torch wheel
coming from a local index folder (PyTorch's CPU index is not reachable from CI either). Inside the image, on
a mounted work folder, the smoke stages run — prepare, a few pretraining steps, export, a fine-tuning step —
once as uid 1000 and once as a uid without an account, and nothing may be written outside the work folder:
the image must work read-only, as under Apptainer. `buildah run` stands in for `docker run`, which CI's
sandbox refuses (podman's runtime). Needs root, debootstrap and buildah (envs/install.sh --test).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "localhost/nepa-test:cpu"
OTHER_UID = 54321  # no account in the image: what `docker run -u` gives a cluster user
DATA = ("data.embedded_images=[256,64]", "data.embedded_scenes=[4,2]", "data.images_per_shard=128")
PRETRAIN = ("global_batch=16", "micro_batch=8", "epochs=1", "warmup_epochs=0.1", "log_every=1", "max_steps=2")
FINETUNE = ("global_batch=16", "micro_batch=8", "epochs=1", "log_every=1", "checkpoint_every=1", "max_steps=1")
STAGES = (
    ("prepare", "embedded"),
    ("prepare", "imagenet"),
    ("pretrain", *(f"pretrain.{s}" for s in (*PRETRAIN, "checkpoint_every=2", "num_workers=0"))),
    ("export",),
    ("finetune", *(f"finetune.{s}" for s in (*FINETUNE, "num_workers=0"))),
)
OUTPUTS = (
    "data/shards/imagenet/manifest.json",
    "runs/tiny-nepa/pretrain/metrics.json",
    "runs/tiny-nepa/export/model.safetensors",
    "runs/tiny-nepa/finetune/metrics.json",
)

# What `buildah run` adds to the command's stderr when it exits non-zero.
BUILDAH_STATUS = re.compile(r"^(subprocess exited with status \d+|Error: exit status \d+)\n", flags=re.MULTILINE)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def run(command: list[str | Path], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, **kwargs)


def checked(command: list[str | Path], **kwargs) -> str:
    done = run(command, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, command))}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout.strip()


def host_mirror() -> str:
    """The Debian (or Ubuntu) archive the host's apt uses, so that debootstrap reaches what the host reaches."""
    sources = [*sorted(Path("/etc/apt/sources.list.d").glob("*.sources")), Path("/etc/apt/sources.list")]
    for path in (p for p in sources if p.is_file()):
        text = path.read_text()
        uris = re.findall(r"^URIs:\s*(\S+)", text, re.M) + re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", text, re.M)
        for uri in uris:
            if "security" not in uri:
                return uri
    return "http://deb.debian.org/debian"


def base_image(scratch: Path) -> str:
    """A minimal system of the host's release as a local image, made once per machine (~1 min)."""
    name = f"localhost/nepa-test-base:{platform.freedesktop_os_release()['VERSION_CODENAME']}"
    if run(["buildah", "inspect", "--type", "image", name]).returncode == 0:
        return name
    rootfs, tar = scratch / "rootfs", scratch / "rootfs.tar"
    suite = name.rsplit(":", 1)[1]
    checked(["debootstrap", "--variant=minbase", suite, rootfs, host_mirror()], timeout=900)
    checked(["tar", "-C", rootfs, "-cf", tar, "."])
    container = checked(["buildah", "from", "scratch"])
    checked(["buildah", "add", container, tar, "/"])
    checked(["buildah", "commit", "--rm", container, name])
    return name


def torch_index(folder: Path) -> Path:
    """A PEP 503 index folder holding the CPU torch wheel of envs/constraints-cpu.txt, fetched as the host's pip
    finds it (for the host's Python, which is the base's: both are the host's release)."""
    pin = re.search(r"^torch==(\S+)", (ROOT / "envs/constraints-cpu.txt").read_text(), re.M)[1]
    wheels = folder / "torch"
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", wheels]
    checked([*pip, "--extra-index-url", "https://download.pytorch.org/whl/cpu", f"torch=={pin}"], timeout=900)
    links = "".join(f'<a href="{quote(w.name)}">{w.name}</a>\n' for w in sorted(wheels.glob("*.whl")))
    (wheels / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")
    return folder


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The CPU image, built from the repository's Dockerfile as a user would, with two local stand-ins: the base
    and the torch index. The host's extra CA certificates go into the build as the host's pip uses them."""
    if os.geteuid() != 0 or not (shutil.which("buildah") and shutil.which("debootstrap")):
        pytest.skip("needs root, buildah and debootstrap (bash envs/install.sh --test installs them)")
    base = base_image(tmp_path_factory.mktemp("base"))
    index = torch_index(tmp_path_factory.mktemp("index"))
    local_cas = Path("/usr/local/share/ca-certificates")
    ca_mount = ["-v", f"{local_cas}:{local_cas}:ro"] if any(local_cas.glob("*.crt")) else []
    start = time.monotonic()
    args = {"VARIANT": "cpu", "BASE": base, "TORCH_INDEX": "file:///torch-index"}
    build_args = [x for k, v in args.items() for x in ("--build-arg", f"{k}={v}")]
    bud = ["buildah", "bud", "--isolation", "chroot", "-f", ROOT / "Dockerfile", "-t", IMAGE, *build_args]
    checked([*bud, "-v", f"{index}:/torch-index:ro", *ca_mount, ROOT], timeout=1200)
    size = checked(["buildah", "images", "--format", "{{.Size}}", IMAGE])
    print(f"\nimage {IMAGE}: built in {time.monotonic() - start:.0f} s, {size}")
    yield IMAGE
    run(["buildah", "rmi", "--force", IMAGE])


@pytest.fixture
def docker_run(image: str, tmp_path: Path) -> Iterator[Callable[..., subprocess.CompletedProcess]]:
    """`docker run --rm --read-only --tmpfs /tmp --tmpfs /var/tmp -u UID:UID -v WORK:/work IMAGE COMMAND`, with
    buildah: /tmp and /var/tmp are folders of the host, as under Apptainer, and a run that writes anywhere
    else in the image fails the test."""
    name = checked(["buildah", "from", "--name", f"nepa-test-{uuid.uuid4().hex[:8]}", image])
    scratch = [tmp_path / "host-tmp", tmp_path / "host-var-tmp"]
    for folder in scratch:
        folder.mkdir()
        folder.chmod(0o1777)
    buildah_run = [
        "buildah",
        "run",
        "--isolation",
        "chroot",
        "-v",
        f"{scratch[0]}:/tmp",
        "-v",
        f"{scratch[1]}:/var/tmp",
    ]
    assert run([*buildah_run, name, "--", "true"]).returncode == 0
    own = written(name)  # what buildah itself puts there (hosts, resolv.conf)

    def docker_run(work: Path, uid: int, *command: str) -> subprocess.CompletedProcess:
        done = run([*buildah_run, "--user", f"{uid}:{uid}", "-v", f"{work}:/work", name, "--", *command], timeout=900)
        assert written(name) == own, f"{' '.join(command)} wrote into the image: {sorted(written(name) - own)}"
        done.stderr = BUILDAH_STATUS.sub("", done.stderr)  # docker adds no such lines
        return done

    yield docker_run
    run(["buildah", "rm", name])


def written(container: str) -> set[str]:
    """Every path written into the container's own file system (its overlay upper layer)."""
    upper = Path(checked(["buildah", "mount", container])).parent / "diff"
    return {str(p.relative_to(upper)) for p in upper.rglob("*")}


def work_folder(path: Path, uid: int, *clone: str) -> Path:
    """A clone's work folder as its owner has it (params.yaml and the given files), owned by the uid that runs
    the image."""
    path.mkdir()
    for name in ("params.yaml", *clone):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, path / name)
    for p in (path, *path.rglob("*")):
        os.chown(p, uid, uid)
    return path


@pytest.mark.parametrize("uid", [1000, OTHER_UID])
def test_smoke_stages_run_as_any_uid_over_a_read_only_image(docker_run, tmp_path: Path, uid: int) -> None:
    work = work_folder(tmp_path / "work", uid)
    for verb, *args in STAGES:
        sets = [x for s in DATA for x in ("--set", s)] + [x for a in args for x in (["--set", a] if "=" in a else [a])]
        done = docker_run(work, uid, "nepa", verb, *sets)
        output = done.stdout + done.stderr
        assert done.returncode == 0 and "Traceback" not in output, f"nepa {verb} as uid {uid}:\n{output[-4000:]}"
        # the CPU op is prebuilt: nothing compiles, nothing falls back
        assert "building DeepSpeed" not in output and "plain gloo" not in output, output[-4000:]
    for output in OUTPUTS:
        assert (work / output).is_file(), output
    assert {p.stat().st_uid for p in work.rglob("*")} == {uid}


def test_snakemake_plans_the_pipeline_as_a_uid_without_an_account(docker_run, tmp_path: Path) -> None:
    """The README's one command (`snakemake --cores all` in the image, on the clone), as a dry run."""
    work = work_folder(tmp_path / "work", OTHER_UID, "Snakefile", "workflow")
    done = docker_run(work, OTHER_UID, "snakemake", "--dry-run", "--cores", "2")
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "Traceback" not in output, output[-4000:]
    assert all(f"rule {rule}:" in output for rule in ("prepare_embedded", "pretrain", "report")), output[-4000:]


def test_a_work_folder_the_uid_cannot_write_is_one_line(docker_run, tmp_path: Path) -> None:
    """A mounted folder owned by someone else (root, here): one line naming what could not be written, exit 2."""
    work = work_folder(tmp_path / "work", 0)
    done = docker_run(work, OTHER_UID, "nepa", "prepare", "embedded")
    assert done.returncode == 2, done.stderr[-4000:]
    assert len(done.stderr.strip().splitlines()) == 1 and "data: Permission denied" in done.stderr, done.stderr


def test_the_apptainer_definition_builds_from_this_images_archive(image: str, docker_run, tmp_path: Path) -> None:
    """envs/apptainer.def bootstraps from a docker archive of this image (as `docker save` writes it): the archive
    its `From:` names, saved by buildah, carries the image's environment, and its `%test` lines pass in the image
    as a uid without an account. Apptainer itself cannot be installed here: its build of the SIF is not run."""
    definition = (ROOT / "envs/apptainer.def").read_text()
    header = dict(re.findall(r"^(Bootstrap|From):\s*(\S+)$", definition, re.M))
    assert header["Bootstrap"] == "docker-archive" and header["From"].endswith(".tar")
    archive = tmp_path / header["From"]
    checked(["buildah", "push", image, f"docker-archive:{archive}:nepa:cuda"], timeout=600)
    with tarfile.open(archive) as tar:
        (manifest,) = json.load(tar.extractfile("manifest.json"))
        config = json.load(tar.extractfile(manifest["Config"]))
    # buildah writes the name in full (docker.io/library/nepa:cuda) beside the image's own, docker save as given
    assert "nepa:cuda" in [tag.rpartition("/")[2] for tag in manifest["RepoTags"]], manifest["RepoTags"]
    assert any(v.startswith("PATH=/opt/nepa/bin:") for v in config["config"]["Env"]), config["config"]["Env"]
    work = work_folder(tmp_path / "work", OTHER_UID)
    tests = re.search(r"^%test\n((?:[ \t]+\S.*\n)+)", definition, re.M)[1].splitlines()
    for line in tests:
        done = docker_run(work, OTHER_UID, "sh", "-c", line.strip())
        assert done.returncode == 0, f"{line.strip()}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
