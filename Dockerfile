# nepa's image: the same install script as the README and CI (envs/install.sh), on a CUDA runtime base
# matching the pinned torch (2.13.0 wheels ship CUDA 13.0 libraries), or the CPU variant:
#   docker build -t nepa .
#   docker build --build-arg VARIANT=cpu --build-arg BASE=ubuntu:24.04 -t nepa:cpu .
# It runs as any uid (docker run -u, Apptainer) over a read-only image: it creates no user (a base may hold
# any uid already: ubuntu:24.04's `ubuntu` is 1000), HOME is the work folder, so every cache goes where the
# caller can write, and the CPU variant carries DeepSpeed's CPU op prebuilt (nothing compiles at run time).
ARG BASE=nvidia/cuda:13.0.1-runtime-ubuntu24.04

FROM ${BASE} AS build
ARG VARIANT=cuda
# The CPU variant's torch: PyTorch's CPU wheel index (PyPI's torch is the CUDA build). A local PEP 503
# folder works too (a mounted file:///… URL), as in tests/test_image.py.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 NEPA_VENV=/opt/nepa NEPA_EDITABLE=0 NEPA_DEBS=0 \
    NEPA_PREBUILD_OPS=1 NEPA_TORCH_INDEX=${TORCH_INDEX}
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc g++ ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY envs/ envs/
COPY pyproject.toml README.md ./
COPY nepa/ nepa/
RUN bash envs/install.sh "--${VARIANT}"

FROM ${BASE}
ARG VARIANT=cuda
ARG VERSION=0.1.0
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="nepa" \
      org.opencontainers.image.description="Reproducibility pipeline for NEPA (Next-Embedding Prediction)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.licenses="Apache-2.0"
# HOME is the work folder (mount the clone there): the caches and configs of matplotlib, Snakemake and DVC
# land in it whatever the uid (torch's compile cache goes to /tmp). USER names a uid without an account for
# getpass (Snakemake, DVC). Apptainer keeps the caller's HOME and USER (or Snakemake's --home).
ENV PATH=/opt/nepa/bin:${PATH} HOME=/work USER=nepa DVC_NO_ANALYTICS=1 PYTHONUNBUFFERED=1
# Runtime Debian packages: Python, the embedded default's data, and git for DVC.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 dataset-fashion-mnist git \
       ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# The CUDA variant: rdma-core's user-space InfiniBand libraries (libibverbs and its providers, mlx5 among them),
# which NCCL loads for its IB transport between nodes; without them NCCL falls back to TCP sockets. The node's
# kernel drivers and /dev/infiniband stay the host's (docs/slurm.md, "Containers on the cluster").
RUN if [ "${VARIANT}" = cuda ]; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libibverbs1 ibverbs-providers \
        && rm -rf /var/lib/apt/lists/*; \
    fi
COPY --from=build /opt/nepa /opt/nepa
WORKDIR /work
# Any uid works (`docker run -u "$(id -u):$(id -g)"`); this one is only the default, no account is needed.
USER 1000:1000
CMD ["nepa", "--help"]
