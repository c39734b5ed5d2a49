# The trainer service (`kdgate trainer serve`): Alertmanager's webhook, the jobs API, and the re-distillation jobs
# it runs on the GPU (the local runner), or the same image as a Kubeflow TrainJob (`trainer.runner: kubernetes`).
#   docker build -f deploy/docker/trainer.Dockerfile -t kdgate/trainer:0.1.0 .            (from the repository root)
#   docker run --gpus 1 -v "$PWD/trainer.yaml:/etc/kdgate/trainer.yaml:ro" kdgate/trainer:0.1.0
#   docker build -f deploy/docker/trainer.Dockerfile --build-arg TORCH=cpu -t kdgate/trainer:0.1.0-cpu .
# Settings: the YAML mounted at /etc/kdgate/trainer.yaml, any key overridden by its KDGATE_TRAINER_ variable.
# TORCH picks where torch comes from: `cuda` (the default, what runs jobs on GPUs) takes the CUDA torch of
# TORCH_IMAGE (12.6: drivers from the CUDA 12 series on; kdgate's torch range accepts it); `cpu` installs PyTorch's
# CPU build into PYTHON_IMAGE as engine.Dockerfile does (same step, shared layer), for clusters without GPUs and for
# building where no registry serves the CUDA image (CI here: --build-arg PYTHON_IMAGE=kdgate-python-base:3.11-bookworm).
ARG TORCH_IMAGE=pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG TORCH=cuda

# /opt/venv over the CUDA image's Python, seeing its torch (--system-site-packages)
FROM ${TORCH_IMAGE} AS torch-cuda
RUN python -m venv --system-site-packages /opt/venv

# /opt/venv with the CPU build of torch (a torch-<TORCH_VERSION>+cpu wheel in deploy/docker/wheels/ wins)
FROM ${PYTHON_IMAGE} AS torch-cpu
ARG TORCH_VERSION=2.13.0
RUN --mount=type=bind,source=deploy/docker/wheels,target=/wheels \
    --mount=type=cache,target=/root/.cache/pip \
    python -m venv /opt/venv \
    && if ls /wheels/torch-"${TORCH_VERSION}"+cpu-*.whl >/dev/null 2>&1; then \
           /opt/venv/bin/pip install --find-links /wheels "torch==${TORCH_VERSION}+cpu"; \
       else \
           /opt/venv/bin/pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"; \
       fi

# pip keeps that torch: a constraint makes any dependency that wants another fail the build instead of downloading
# one. xgrammar pulls triton, which the CPU build never runs (1 GB): the CPU variant drops it, as the engine does.
# a stage of this file named by TORCH (torch-cuda or torch-cpu), not an image: it has no tag to pin
# hadolint ignore=DL3006
FROM torch-${TORCH} AS builder
ARG TORCH
RUN /opt/venv/bin/python -c "import torch; print('torch==' + torch.__version__)" > /tmp/torch-constraint.txt
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kdgate/ kdgate/
COPY gateway/ gateway/
COPY runtime/ runtime/
COPY router/ router/
COPY distill/ distill/
COPY loadtests/ loadtests/
# The trainer's default recipe, distill/configs/redistill.yaml, is package data of the wheel.
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/venv/bin/pip install --constraint /tmp/torch-constraint.txt ".[train,quantize,kubernetes]" \
    && if [ "${TORCH}" = cpu ]; then /opt/venv/bin/pip uninstall --yes triton; fi

FROM ${TORCH_IMAGE} AS runtime-cuda
FROM ${PYTHON_IMAGE} AS runtime-cpu

# a stage of this file named by TORCH (runtime-cuda or runtime-cpu), not an image: it has no tag to pin
# hadolint ignore=DL3006
FROM runtime-${TORCH}
ARG TORCH
ARG VERSION=0.1.0
ARG REVISION=""
ARG SOURCE=""
LABEL org.opencontainers.image.title="kdgate-trainer" \
      org.opencontainers.image.description="kdgate's re-distillation service: Alertmanager webhook, jobs API, KD training (torch: ${TORCH})" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 kdgate \
    && useradd --system --uid 10001 --gid 10001 --home-dir /srv/kdgate --create-home kdgate \
    && mkdir -p /var/lib/kdgate/trainer \
    && chown 10001:10001 /var/lib/kdgate/trainer
COPY --from=builder /opt/venv /opt/venv
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    KDGATE_TRAINER_HOST=0.0.0.0 \
    KDGATE_TRAINER_PORT=8010
# golden.path defaults to the demo's golden set, inside the package: give your own in production. An empty named
# volume mounted at /var/lib/kdgate/trainer (the work_dir to set) takes this directory's owner, 10001.
WORKDIR /srv/kdgate
USER 10001:10001
EXPOSE 8010
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('KDGATE_TRAINER_PORT', '8010'), timeout=4)"]
CMD ["kdgate", "trainer", "serve", "--config", "/etc/kdgate/trainer.yaml"]
