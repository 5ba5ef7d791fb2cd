# One image for every whplane process:
#   docker run IMAGE gateway --config etcd://... --host 0.0.0.0
#   docker run IMAGE worker --config etcd://... --redis-url redis://...
#   docker run IMAGE control-plane --store etcd://... --host 0.0.0.0 --admin-token-file ...
#   docker run --entrypoint whctl IMAGE --server http://... get webhooks -A
# See docker-compose.yml for a whole deployment and docs/operating.md for running it.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: install the project and its runtime dependencies into a virtualenv -----------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/whplane
WORKDIR /src
COPY pyproject.toml README.md ./
COPY providers/ providers/
COPY data_plane/ data_plane/
COPY control_plane/ control_plane/
COPY cli/ cli/
# The delivery modules' client libraries ([modules]); not [servers], [test] or [dev], which are
# for `make test` and `whplane up`.
RUN /opt/whplane/bin/pip install ".[modules]"

# --- runtime ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 whplane \
    && useradd --system --uid 10001 --gid whplane --home-dir /var/lib/whplane \
       --shell /usr/sbin/nologin whplane \
    && mkdir -p /var/lib/whplane/state /var/lib/whplane/whplane-out \
    && chown -R whplane:whplane /var/lib/whplane
COPY --from=build /opt/whplane /opt/whplane
# WH_STATE_DIR: where a gateway keeps its last good config (mount a volume there).
# whplane-out/ is where the examples' `file` steps write ({$WH_EXAMPLES_OUT:whplane-out}).
ENV PATH=/opt/whplane/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/whplane \
    WH_STATE_DIR=/var/lib/whplane/state
WORKDIR /var/lib/whplane
USER 10001:10001
# 8070: control plane; 8080: gateway. Health checks live in docker-compose.yml.
EXPOSE 8070 8080
ENTRYPOINT ["whplane"]
CMD ["--help"]
