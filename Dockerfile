# syntax=docker/dockerfile:1.7
#
# Image of the inference service: `python -m service` on port 8000, models from /models.
#
#   GPU (default):  docker build -t perceptual-service:gpu .
#   CPU:            docker build -t perceptual-service:cpu --build-arg VARIANT=cpu .
#
# Stages: os-gpu | os-cpu (picked by VARIANT) -> os (Python) -> build (venv, wheels, models)
# -> runtime (the OS stage plus /opt/venv and /models; no pip cache, compiler or source tree).
#
# GPU base and torch build go together. The CUDA libraries torch uses (cuBLAS, cuDNN, NCCL, ...)
# come as pip wheels pulled in by the torch wheel itself, so the base only needs to say which CUDA
# the image targets: `nvidia/cuda:*-base` carries the CUDA 12.8 runtime (cudart) and the
# NVIDIA_REQUIRE_CUDA / NVIDIA_VISIBLE_DEVICES variables, with which the NVIDIA container runtime
# refuses to start the container on a driver too old for CUDA 12.8 instead of failing at the
# first kernel. The `-cudnn-runtime` flavour would add ~3 GB of libraries that torch never loads.
# cu128 rather than cu130: CUDA 12.8 needs an R570 or newer driver, CUDA 13.0 an R580 one, and
# GPU nodes often run the older branch.
# To move CUDA, change CUDA_IMAGE and TORCH_CUDA together (e.g. 13.0.x-base + cu130).
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04
ARG CPU_IMAGE=ubuntu:24.04
# gpu | cpu
ARG VARIANT=gpu

FROM ${CUDA_IMAGE} AS os-gpu
FROM ${CPU_IMAGE} AS os-cpu

# hadolint ignore=DL3006
FROM os-${VARIANT} AS os
# Ubuntu 24.04's Python 3.12 (the project needs 3.11+). Package versions are not pinned: the
# base image tag pins the release, and the archive drops superseded versions, so a pin would
# only break rebuilds that should pick up security fixes.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/*

FROM os AS build
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src

# torch and torchvision come from PyTorch's index for the variant (CUDA 12.8 or CPU-only
# wheels); the constraints file stops any later install from swapping them for PyPI's build.
# The project's range is torch>=2.11,<2.15; 2.11 is the release known to have cu128 wheels.
ARG VARIANT
ARG TORCH_CUDA=cu128
ARG TORCH_VERSION=2.11.0
ARG TORCHVISION_VERSION=0.26.0
ENV PIP_CONSTRAINT=/opt/constraints.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    printf 'torch==%s\ntorchvision==%s\n' "$TORCH_VERSION" "$TORCHVISION_VERSION" \
      > /opt/constraints.txt \
 && if [ "$VARIANT" = cpu ]; then flavour=cpu; else flavour="$TORCH_CUDA"; fi \
 && pip install --index-url "https://download.pytorch.org/whl/$flavour" \
      "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"

# The remaining dependencies, read from pyproject.toml: this layer is rebuilt only when the
# dependency list changes, not on every source edit. The CPU image adds the `cpu` extra (ONNX
# Runtime, OpenVINO): the service's fastest CPU execution paths.
COPY pyproject.toml README.md* ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c "import sys, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print(*p['dependencies'], *(p['optional-dependencies']['cpu'] if sys.argv[1] == 'cpu' else []), sep='\n')" "$VARIANT" \
      > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt

# The project itself, as a regular (non-editable) install into the venv.
COPY nets/ nets/
COPY model_store/ model_store/
COPY train/ train/
COPY service/ service/
COPY bench/ bench/
COPY report/ report/
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps .

# The shipped models: every model_store/ sub-folder that holds a manifest, checked now (sha256
# and that the weights fit the architecture) so that a broken or Git-LFS-pointer file fails the
# build rather than the pod. The package's own .py files stay out of /models.
RUN mkdir /opt/models \
 && for d in model_store/*/; do \
      if [ -f "$d/manifest.json" ]; then cp -r "$d" /opt/models/; fi; \
    done \
 && python -c "from model_store import ModelStore; s = ModelStore('/opt/models'); names = s.names(); [s.validate(n) for n in names]; print('shipped models:', ', '.join(names) or 'none (mount a model store at /models)')"


FROM os AS runtime
# A fixed numeric UID/GID, so that Kubernetes' runAsNonRoot can verify it without /etc/passwd.
# /var/cache/perceptual-service: the stored policies' folder (SERVICE_POLICY_FILE in k8s and
# compose), owned by the app user so that a fresh volume mounted there starts writable.
RUN groupadd --gid 10001 app \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin app \
 && install -d -o 10001 -g 10001 /var/cache/perceptual-service
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/models /models
COPY docker/healthcheck.py /usr/local/bin/healthcheck.py

# PYTHONUNBUFFERED: log lines reach `docker logs` / kubectl at once.
# PYTHONDONTWRITEBYTECODE: the code is byte-compiled at install; the root filesystem may be
#   read-only, and the app user cannot write to /opt/venv anyway.
# XDG_CACHE_HOME, CUDA_CACHE_PATH: anything that caches (torch, the CUDA JIT) writes under /tmp,
#   the one writable path when the root filesystem is read-only.
# SERVICE_MODEL_STORE: the shipped models; mount a volume over /models, or point this elsewhere.
# SERVICE_HOST, SERVICE_PORT: where `python -m service` listens (also read by the healthcheck),
#   set here rather than left to the settings' defaults, since EXPOSE and the probes rely on them.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    XDG_CACHE_HOME=/tmp/.cache \
    CUDA_CACHE_PATH=/tmp/.nv \
    SERVICE_MODEL_STORE=/models \
    SERVICE_HOST=0.0.0.0 \
    SERVICE_PORT=8000

USER 10001:10001
EXPOSE 8000

# Liveness only (/healthz): /readyz is 503 while models load in the background and while the
# service drains, and Docker would then call a healthy, draining container unhealthy.
# --start-period covers the import of torch and CUDA initialisation.
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/bin/healthcheck.py"]

# Exec form: Python is PID 1 and receives SIGTERM itself, which starts the drain.
# Same as `python -m service --host 0.0.0.0 --port 8000`, with host and port from ENV above.
CMD ["python", "-m", "service"]
