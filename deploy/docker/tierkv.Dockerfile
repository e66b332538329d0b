# syntax=docker/dockerfile:1
# The tierkv binary: `tierkv engine`, `serve`, `frontend`, `register` (one image, the
# role is the first argument). Build from the repository root:
#   docker build -f deploy/docker/tierkv.Dockerfile -t tierkv .
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libclang-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release -p tierkv-cli --bin tierkv && strip target/release/tierkv

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin tierkv
COPY --from=build /src/target/release/tierkv /usr/local/bin/tierkv
USER 10001
WORKDIR /home/tierkv
EXPOSE 8000 7070 9100
# Engine and frontend roles answer /health on their API port (8000 by default).
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s CMD curl -fsS http://127.0.0.1:8000/health || exit 1
ENTRYPOINT ["/usr/local/bin/tierkv"]
CMD ["--help"]
