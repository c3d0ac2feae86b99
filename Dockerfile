# syntax=docker/dockerfile:1
# enumwatch image: one image for the operator (`enumwatch run`), the tailer (`enumwatch tail`) and
# the managed-cluster collector (`enumwatch collect`, with the eks, gke and aks extras).
#
#   docker build -t enumwatch:0.1.0 .
#
# Stage 1 builds wheels (the package and every dependency); stage 2 installs them into a clean
# slim Python with no compiler, no pip cache, no source tree, and runs as a numeric non-root user
# (so the kubelet can verify runAsNonRoot). The tailer overrides the user to 0 in its pod spec:
# see manifests/base/operator.yaml for why.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The package's typed decoder is a C extension (setup.py): the builder needs a C compiler and
# Python's headers, installed from Debian when the base lacks them (python:3.11-slim has the
# headers, a Debian python3.11 needs python3.11-dev). The final stage gets the built wheel only.
RUN if ! command -v gcc >/dev/null 2>&1 \
      || ! python -c "import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))"; then \
      headers="$(python -c "import os, sysconfig; print('' if os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')) else 'python3.11-dev')")" \
      && apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev $headers \
      && rm -rf /var/lib/apt/lists/*; \
    fi
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY operator ./operator
RUN python -m pip wheel --wheel-dir /wheels ".[eks,gke,aks,kafka]"

FROM ${PYTHON_IMAGE}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# The runtime user has a passwd entry: kopf names its peering identity after getpass.getuser(),
# which fails for a uid that /etc/passwd does not know ("getpwuid(): uid not found").
# mimalloc (Debian's libmimalloc2.0): `enumwatch run` re-executes itself on it, with transparent
# huge pages, when it is installed (--allocator auto; operator/enumwatch/controller/allocator.py):
# less CPU per event than CPython's allocator. Installed from Debian unless the base has it.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m pip install --no-index --find-links=/wheels "enumwatch[eks,gke,aks,kafka]" \
 && python -m pip uninstall --yes pip setuptools wheel \
 && if ! dpkg-query -W -f='${Status}' libmimalloc2.0 2>/dev/null | grep -q "install ok installed"; then \
      apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libmimalloc2.0 \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && groupadd --system --gid 65532 enumwatch \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin enumwatch
USER 65532:65532
WORKDIR /tmp
EXPOSE 8080
# No HEALTHCHECK: Kubernetes ignores it; the Deployment's liveness and readiness probes call
# /healthz and /readyz on port 8080. The tailer (same image) serves no HTTP at all.
ENTRYPOINT ["enumwatch"]
CMD ["--help"]
