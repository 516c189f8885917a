# nepa's image: the same install script as the README and CI (envs/install.sh), on a CUDA runtime base
# matching the pinned torch (2.13.0 wheels ship CUDA 13.0 libraries). CPU variant from the same file:
#   docker build --build-arg VARIANT=cpu --build-arg BASE=ubuntu:24.04 -t nepa:cpu .
ARG BASE=nvidia/cuda:13.0.1-runtime-ubuntu24.04

FROM ${BASE} AS build
ARG VARIANT=cuda
# The CPU torch wheel lives on PyTorch's own index; PyPI's torch is the CUDA build.
ARG TORCH_INDEX=""
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 NEPA_VENV=/opt/nepa NEPA_EDITABLE=0 \
    NEPA_TORCH_INDEX=${TORCH_INDEX}
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc g++ git ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY envs/ envs/
COPY pyproject.toml README.md ./
COPY nepa/ nepa/
RUN bash envs/install.sh "--${VARIANT}" && rm -rf /root/.cache

FROM ${BASE}
ARG VERSION=0.1.0
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="nepa" \
      org.opencontainers.image.description="Reproducibility pipeline for NEPA (Next-Embedding Prediction)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV DEBIAN_FRONTEND=noninteractive PATH=/opt/nepa/bin:${PATH} DVC_NO_ANALYTICS=1 PYTHONUNBUFFERED=1
# Runtime Debian packages: Python, the embedded default's data, and git for DVC.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 dataset-fashion-mnist git ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 nepa
COPY --from=build /opt/nepa /opt/nepa
WORKDIR /work
USER 1000
ENTRYPOINT ["nepa"]
CMD ["--help"]
