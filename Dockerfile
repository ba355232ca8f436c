# syntax=docker/dockerfile:1
# The one kvs2 image: `kvs2 serve` (a store replica) and `kvs2 operator` (the operator) are its commands.
# The operator's StatefulSets and its own Deployment set `command` explicitly, so the entry point only
# matters for `docker run kvs2 ...`.
#
#   docker build -t kvs2:0.1.0 .
#   docker run --rm kvs2:0.1.0 --help
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
# Wheels for the package and every dependency (confluent-kafka, lmdb and grpcio ship manylinux wheels,
# so no compiler is needed); the final stage installs them without a build toolchain or a cache.
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY dataplane ./dataplane
COPY operator ./operator
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels kvs2 \
 && groupadd --system --gid 65532 kvs2 \
 && useradd --system --uid 65532 --gid 65532 --home-dir /var/lib/kvs2 --shell /usr/sbin/nologin kvs2 \
 && install -d -o 65532 -g 65532 -m 0750 /var/lib/kvs2
# Numeric, so `runAsNonRoot` can verify it without reading /etc/passwd.
USER 65532:65532
WORKDIR /var/lib/kvs2
# The replica's LMDB lives here (the StatefulSet mounts its PersistentVolumeClaim on it).
VOLUME ["/var/lib/kvs2"]
EXPOSE 50051
ENTRYPOINT ["kvs2"]
CMD ["--help"]
