# The live processor as an image: `docker build -t refund-processor .`
# Settings: mount a YAML file and name it in REFUND_CONFIG, secrets as REFUND_* variables
# (docker-compose.yml does both). `docker run --rm refund-processor --help` lists commands.

FROM python:3.11-slim AS build
# The uv the Makefile pins, so the image resolves uv.lock exactly as `make install` does.
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /bin/uv
# The image's own Python (no download), a non-editable install: the runtime stage gets
# the virtual environment alone, not the sources.
ENV UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PROJECT_ENVIRONMENT=/opt/refund-processor
WORKDIR /src
# Dependencies first: a change to the sources rebuilds only the layers below.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-editable --no-install-project
COPY README.md ./
COPY schemas schemas
COPY config config
COPY processor processor
RUN uv sync --frozen --no-dev --no-editable

FROM python:3.11-slim
RUN groupadd --gid 10001 refunds \
    && useradd --uid 10001 --gid refunds --create-home --shell /usr/sbin/nologin refunds
COPY --from=build /opt/refund-processor /opt/refund-processor
ENV PATH=/opt/refund-processor/bin:$PATH \
    PYTHONUNBUFFERED=1
# Numeric, so an orchestrator's runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /home/refunds
# The metrics endpoint of config/compose.yaml (metrics.port).
EXPOSE 9108
ENTRYPOINT ["refund-processor"]
CMD ["run"]
