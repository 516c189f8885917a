#!/usr/bin/env bash
# The one install of nepa: the README's set-up, CI (.ci/run) and the Docker image all run this script.
#
#   bash envs/install.sh            runtime: Debian data package + Python env in .venv (CPU torch)
#   bash envs/install.sh --test     + test tools and the real services the tests drive (SLURM, munge, chromium)
#   bash envs/install.sh --cuda     CUDA torch instead of the CPU build (GPU hosts, the CUDA image)
#
# NEPA_VENV=PATH puts the environment elsewhere (the image uses /opt/nepa); NEPA_EDITABLE=0 installs nepa
# as a regular package (the image); NEPA_DEBS=0 skips the Debian packages (the image's build stage);
# NEPA_TORCH_INDEX=URL is where the CPU torch comes from (default: PyTorch's CPU wheel index; PyPI's torch is
# the CUDA build); NEPA_PREBUILD_OPS=1 builds DeepSpeed's CPU op into the package (the CPU image) instead of
# JIT-building it on first use. Idempotent and fast when nothing changed: a stamp of the requirement files'
# hash skips pip.
set -euo pipefail
cd "$(dirname "$0")/.."

variant=cpu
with_test=0
for arg in "$@"; do
  case "$arg" in
    --test) with_test=1 ;;
    --cuda) variant=cuda ;;
    --cpu) variant=cpu ;;
    *) echo "install.sh: unknown option $arg (use --test, --cpu, --cuda)" >&2; exit 2 ;;
  esac
done
venv=${NEPA_VENV:-.venv}
editable=(-e)
[ "${NEPA_EDITABLE:-1}" = 0 ] && editable=()
say() { printf '\033[1m[nepa setup]\033[0m %s\n' "$*"; }

# ---- Debian packages ------------------------------------------------------------------------------
# dataset-fashion-mnist: the real images of the embedded default. The test services: a one-node SLURM
# (slurm-wlm + munge), headless chromium (the report's HTML is rendered in a test), and debootstrap + buildah
# (tests/test_image.py builds the CPU image on a base it makes itself).
debs=(dataset-fashion-mnist)
[ "$with_test" = 1 ] && debs+=(slurm-wlm munge chromium debootstrap buildah)
[ "${NEPA_DEBS:-1}" = 0 ] && debs=()
missing=()
for pkg in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  elif command -v apt-get >/dev/null && [ "${missing[*]}" = dataset-fashion-mnist ]; then
    # No root: the data package is plain files, so unpack it into the repo's cache instead.
    cache=.cache/debs
    if [ ! -d "$cache/usr/share/datasets/fashion-mnist" ]; then
      say "no root: unpacking dataset-fashion-mnist into $cache"
      mkdir -p "$cache" && (cd "$cache" && apt-get download dataset-fashion-mnist >/dev/null)
      dpkg -x "$cache"/dataset-fashion-mnist_*.deb "$cache"
    fi
  else
    echo "nepa setup: install the Debian packages ${missing[*]} (as root: apt-get install ${missing[*]})" >&2
    exit 2
  fi
fi

# ---- Python environment ---------------------------------------------------------------------------
requirements=(-r envs/requirements-"$variant".txt)
[ "$with_test" = 1 ] && requirements+=(-r envs/requirements-dev.txt)
torch=("$(grep '^torch==' envs/requirements-cuda.txt)")
constraints=()
if [ "$variant" = cpu ]; then
  # The constraint names the CPU build (+cpu), so that no resolution can bring a CUDA torch (+2.8 GB).
  torch=(--extra-index-url "${NEPA_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
         "$(grep '^torch==' envs/constraints-cpu.txt)")
  constraints=(-c envs/constraints-cpu.txt)
fi
prebuild=${NEPA_PREBUILD_OPS:-0}
stamp="$venv/.nepa-install-$variant-$with_test-$prebuild"
want=$(cat envs/*.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ]; then
  say "python venv in $venv"
  python3 -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
  say "pip install ${torch[*]: -1} and the pinned requirements"
  "${pip[@]}" "${torch[@]}" 2>&1 | grep -v "^WARNING: Location" || true
  if [ "$prebuild" = 1 ] && [ "$variant" = cpu ]; then
    # DeepSpeed's documented pre-install of one op (DS_BUILD_<OP>=1, all others off), built against the torch
    # just installed, so that runs neither compile nor write a build folder (the CPU image has no compiler).
    say "DeepSpeed with its CPU communication op prebuilt (~2 min)"
    "${pip[@]}" -r envs/requirements-build.txt 2>&1 | grep -v "^WARNING: Location" || true
    DS_ACCELERATOR=cpu DS_BUILD_OPS=0 DS_BUILD_SHM_COMM=1 "${pip[@]}" --no-build-isolation --use-pep517 --no-cache-dir \
      "${constraints[@]}" "$(grep '^deepspeed==' envs/requirements.txt)" 2>&1 | grep -v "^WARNING: Location" || true
    "$venv/bin/python" -c "from deepspeed.git_version_info import installed_ops as op; assert op['deepspeed_shm_comm']" \
      >/dev/null 2>&1 || { echo "nepa setup: DeepSpeed's CPU op did not build; see the messages above" >&2; exit 1; }
  fi
  "${pip[@]}" "${constraints[@]}" "${requirements[@]}" 2>&1 | grep -v "^WARNING: Location" || true
  "${pip[@]}" "${constraints[@]}" --no-deps "${editable[@]}" . 2>&1 | grep -v "^WARNING: Location" || true
  "$venv/bin/python" -c "import torch, deepspeed, snakemake, dvc" 2>/dev/null \
    || { echo "nepa setup: pip install failed; see the messages above" >&2; exit 1; }
  echo "$want" >"$stamp"
fi
"$venv/bin/python" envs/patch_torchvision.py
"$venv/bin/python" -c "import timm, nepa.models" || { echo "nepa setup: import timm failed" >&2; exit 1; }
if [ "$variant" = cpu ]; then
  # DeepSpeed's CPU communication op, where not prebuilt, is JIT-built on first use (~1 min, then cached for
  # this environment): build it here, as every run does, so that the first pipeline run does not pay for it.
  say "DeepSpeed CPU communication op"
  "$venv/bin/python" -c "from nepa.engine.distributed import build_cpu_comm_op; build_cpu_comm_op()" >/dev/null
fi
# `snakemake --profile slurm` finds profiles by name in the user's config: link ours there.
profiles=${XDG_CONFIG_HOME:-$HOME/.config}/snakemake
if [ ! -e "$profiles/slurm" ]; then
  mkdir -p "$profiles" && ln -s "$PWD/workflow/profiles/slurm" "$profiles/slurm"
elif [ "$(readlink -f "$profiles/slurm")" != "$(readlink -f workflow/profiles/slurm)" ]; then
  say "note: $profiles/slurm is another profile; use --workflow-profile workflow/profiles/slurm"
fi
say "ready: $venv (torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)'))"
