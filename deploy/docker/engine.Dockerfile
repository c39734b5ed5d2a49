# The local engine (`kdgate engine`) for clusters without GPUs: one model behind vLLM's OpenAI API, on CPU torch.
#   docker build -f deploy/docker/engine.Dockerfile -t kdgate/engine:0.1.0 .              (from the repository root)
#   docker run -p 8000:8000 -v /srv/models/student:/models/model:ro kdgate/engine:0.1.0
# Like the vllm/vllm-openai image, the entrypoint is the server and the arguments are its flags (the model included):
#   docker run ... kdgate/engine:0.1.0 --model=/models/student --served-model-name=student --host=0.0.0.0 --port=8000
# The health check asks port 8000, as vLLM's image does: keep --port=8000 inside the container.
# Where no registry answers: deploy/docker/debian-base.sh, then --build-arg PYTHON_IMAGE=kdgate-python-base:3.11-bookworm
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# The builder installs the CPU build of torch first (an unpinned `torch` from PyPI is the CUDA build, several GB),
# then kdgate[engine], whose torch range that build already meets; the runtime copies the venv alone.
# A torch-<TORCH_VERSION>+cpu wheel in deploy/docker/wheels/ is installed instead of PyTorch's CPU index's (for a
# network that reaches PyPI alone). pip's cache is a BuildKit cache mount, kept out of the image: the engine and
# trainer builds download torch's, transformers' and xgrammar's wheels once. trainer.Dockerfile's CPU variant has
# this very step, so the two builds share its layer.
FROM ${PYTHON_IMAGE} AS builder
ARG TORCH_VERSION=2.13.0
RUN --mount=type=bind,source=deploy/docker/wheels,target=/wheels \
    --mount=type=cache,target=/root/.cache/pip \
    python -m venv /opt/venv \
    && if ls /wheels/torch-"${TORCH_VERSION}"+cpu-*.whl >/dev/null 2>&1; then \
           /opt/venv/bin/pip install --find-links /wheels "torch==${TORCH_VERSION}+cpu"; \
       else \
           /opt/venv/bin/pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"; \
       fi
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kdgate/ kdgate/
COPY gateway/ gateway/
COPY runtime/ runtime/
COPY router/ router/
COPY distill/ distill/
COPY loadtests/ loadtests/
# triton: xgrammar's GPU kernels (1 GB), which the CPU build of torch never runs (as ./dev does)
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/venv/bin/pip install ".[engine]" && /opt/venv/bin/pip uninstall --yes triton

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=""
ARG SOURCE=""
LABEL org.opencontainers.image.title="kdgate-engine" \
      org.opencontainers.image.description="kdgate's local engine: one Hugging Face model behind vLLM's OpenAI API, on CPU" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 kdgate \
    && useradd --system --uid 10001 --gid 10001 --home-dir /srv/kdgate --create-home kdgate
COPY --from=builder /opt/venv /opt/venv
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /srv/kdgate
USER 10001:10001
EXPOSE 8000
# Loading a model takes a while on CPU: the start period covers it.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
ENTRYPOINT ["kdgate", "engine"]
CMD ["--model=/models/model", "--host=0.0.0.0", "--port=8000"]
