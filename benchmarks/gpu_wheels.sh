#!/usr/bin/env bash
# The wheels the GPU machine lacks, for its Python 3.12 on x86-64, into .whl/ (git-ignored), at the versions of the
# project's environment. That machine has torch 2.11 (CUDA 13), timm, numpy, pandas, pyarrow, pillow, pyyaml,
# safetensors, scikit-image and DeepSpeed's other needs, and no network; benchmarks/gpu_suite.sh installs .whl/*.whl
# into /tmp/nepa-site first when the folder is there. Run here, in the project's environment, from the root:
#
#   bash benchmarks/gpu_wheels.sh          # then the device run carries ".whl" (benchmarks/README.md)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
exclude=$(git rev-parse --git-path info/exclude)
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
rm -rf .whl && mkdir .whl

version() { $PY -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }

# not on the machine: pydantic (+ its core, types and typing pins), hjson (DeepSpeed), submitit (nepa.launch);
# timm at the project's pin, in case the machine's is older than what nepa uses
for name in pydantic pydantic-core annotated-types typing-inspection typing-extensions hjson submitit timm; do
    $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d .whl "$name==$(version "$name")"
done
# DeepSpeed publishes a source archive only: its wheel is pure Python when built without ops
DS_BUILD_OPS=0 $PY -m pip wheel -q --no-deps --no-build-isolation -w .whl "deepspeed==$(version deepspeed)"
ls -la .whl
du -sh .whl
