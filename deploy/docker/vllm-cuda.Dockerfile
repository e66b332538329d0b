# syntax=docker/dockerfile:1
# A vLLM worker for GPU nodes: the official vLLM CUDA image plus the tierkv package
# (built with the `cuda` feature: the transfer engine loads CUDA at run time, so the
# same wheel serves CPU and GPU workers).
#   docker build -f deploy/docker/vllm-cuda.Dockerfile -t vllm-tierkv:cuda .
FROM rust:1.95-bookworm AS wheel
RUN apt-get update && apt-get install -y --no-install-recommends python3-pip python3-venv libclang-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN python3 -m venv /opt/build && /opt/build/bin/pip install -q maturin==1.16.0 \
    && cd engine/python && /opt/build/bin/maturin build --release -o /wheels

FROM vllm/vllm-openai:v0.32.0
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir --no-deps /wheels/tierkv-*.whl && rm -rf /wheels \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin vllm
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=600s CMD curl -fsS http://127.0.0.1:8000/health || exit 1
ENTRYPOINT ["vllm"]
CMD ["--help"]
