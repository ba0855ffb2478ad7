# telephony-bridge: a small image that runs `telephony-bridge serve` as a non-root user.
# Build: docker build -t telephony-bridge .
# Run:   docker run -p 8080:8080 --env-file .env -v "$PWD/config:/etc/telephony-bridge:ro" telephony-bridge

# The audio converters' C extension (telephony_bridge/_polyphase.c) needs a compiler, which the
# slim image lacks: the wheel is built here and only the wheel is carried over.
FROM python:3.11 AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY telephony_bridge ./telephony_bridge
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BRIDGE_CONFIG=/etc/telephony-bridge/bridge.toml

COPY --from=builder /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels

# The call log and recordings are written under /var/lib/telephony-bridge (the working directory): mount a volume there.
RUN useradd --system --uid 10001 --home-dir /var/lib/telephony-bridge --create-home bridge
USER bridge
WORKDIR /var/lib/telephony-bridge

# The configuration is mounted read-only; `telephony-bridge reload` or SIGHUP re-reads it.
VOLUME ["/etc/telephony-bridge"]
EXPOSE 8080

# Liveness only: /readyz (503 while draining) is for load balancers, which must stop sending calls first.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]

# SIGTERM drains: new calls are refused while live ones finish for up to [limits] drain_seconds.
STOPSIGNAL SIGTERM
ENTRYPOINT ["telephony-bridge"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
