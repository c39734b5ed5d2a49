# The trainer service (`kdgate trainer serve`): Alertmanager's webhook, the jobs API, and the re-distillation jobs
# it runs on the GPU (the local runner), or the same image as a Kubeflow TrainJob (`trainer.runner: kubernetes`).
#   docker build -f deploy/docker/trainer.Dockerfile -t kdgate/trainer:0.1.0 .            (from the repository root)
#   docker run --gpus 1 -v "$PWD/trainer.yaml:/etc/kdgate/trainer.yaml:ro" kdgate/trainer:0.1.0
# Settings: the YAML mounted at /etc/kdgate/trainer.yaml, any key overridden by its KDGATE_TRAINER_ variable.
# The base image brings CUDA torch (12.6: drivers from the CUDA 12 series on); kdgate's torch range accepts it.
ARG TORCH_IMAGE=pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime

# The builder makes /opt/venv over the image's Python, seeing its torch (--system-site-packages): pip keeps that
# torch (a constraint makes any dependency that wants another fail the build instead of downloading one).
FROM ${TORCH_IMAGE} AS builder
RUN python -m venv --system-site-packages /opt/venv \
    && python -c "import torch; print('torch==' + torch.__version__)" > /tmp/torch-constraint.txt
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kdgate/ kdgate/
COPY gateway/ gateway/
COPY runtime/ runtime/
COPY router/ router/
COPY distill/ distill/
COPY loadtests/ loadtests/
# The trainer's default recipe, distill/configs/redistill.yaml, is package data of the wheel.
RUN /opt/venv/bin/pip install --no-cache-dir --constraint /tmp/torch-constraint.txt ".[train,quantize,kubernetes]"

FROM ${TORCH_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=""
ARG SOURCE=""
LABEL org.opencontainers.image.title="kdgate-trainer" \
      org.opencontainers.image.description="kdgate's re-distillation service: Alertmanager webhook, jobs API, KD training on GPU" \
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
