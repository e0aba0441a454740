# syntax=docker/dockerfile:1
# One image for every Lianxin process (DESIGN §4, §9):
#   lianxin serve  --service <name>   the <service>-api process (grpcio, never eventlet)
#   lianxin worker --service <name>   the <service>-worker process (nameko)
#   lianxin migrate [--service <name>] the migration step (a Kubernetes Job)
#   lianxin node / lianxin up         the embedded modes, handy for a quick look
# Build:  docker build -t lianxin:dev .

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------- build: wheels and a venv
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# Every dependency ships manylinux wheels for 3.11, so no compiler is installed here; if one ever
# needs building, add build-essential to this stage only (it never reaches the runtime image).
RUN python -m venv /opt/lianxin
ENV PATH=/opt/lianxin/bin:$PATH
WORKDIR /src
# Dependencies first so that a source-only change reuses this layer. pyproject pins the direct
# dependencies and constraints.txt (the lock `make venv` uses) pins every transitive one.
COPY pyproject.toml README.md constraints.txt ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
    > /tmp/requirements.txt
RUN pip install --upgrade "pip>=24" && pip install -c constraints.txt -r /tmp/requirements.txt
# The project itself: services/ plus the generated protobuf package gen/python/lianxin.
COPY services ./services
COPY gen ./gen
# The smoke check runs the real command: it fails the build if any command module imports something
# the image lacks (bench/, a dev extra). tests/e2e/test_image_file_set.py runs the same file set.
RUN pip install --no-deps . \
    && lianxin --help >/dev/null \
    && python -c "import services.cli, services.node, services.common.reflection, lianxin.stats.v1.stats_service_pb2_grpc" \
    && python -m compileall -q /opt/lianxin

# ---------------------------------------------------------------- runtime: non-root, read-only friendly
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="lianxin" \
      org.opencontainers.image.description="Lianxin (连心) petition and 12345 hotline platform: api, worker and migrate entrypoints" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric uid so Kubernetes can verify runAsNonRoot without resolving names.
# CJK glyphs for the monthly bulletin's charts (services/stats/bulletin.py looks for Noto Sans CJK SC);
# without them the bars are labelled C1, C2, ... instead of 环境保护, 城乡建设.
# Not pinned to a Debian revision: the font follows the base image's Debian release (and its security
# updates); a pinned revision disappears from the archive at the next point release and breaks the build.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends fonts-noto-cjk \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 lianxin \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/lianxin --create-home --shell /usr/sbin/nologin lianxin
COPY --from=build /opt/lianxin /opt/lianxin
# The root filesystem is read-only in Kubernetes: bytecode was compiled at build time, and every
# cache (matplotlib, jieba, embedded SQLite data) goes to /tmp, which is an emptyDir there.
ENV PATH=/opt/lianxin/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    HOME=/tmp \
    LIANXIN_DATA_DIR=/tmp/lianxin \
    LIANXIN_GRPC_HOST=0.0.0.0 \
    LIANXIN_GRPC_PORT=50051 \
    LIANXIN_METRICS_PORT=9464
WORKDIR /tmp
USER 10001:10001
EXPOSE 50051 9464
ENTRYPOINT ["lianxin"]
CMD ["serve", "--service", "intake"]
