# syntax=docker/dockerfile:1
# The selector image, built from source. cargo-chef caches the dependency
# build in its own layer, so a change to the project's code rebuilds only the
# project. librdkafka is built statically (rdkafka's `cmake-build`).
#
#   docker build -t tail-sampling-selector .

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS chef
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config libcurl4-openssl-dev libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# Dependencies only: this layer is reused until Cargo.toml or Cargo.lock change.
RUN cargo chef cook --release --recipe-path recipe.json
COPY . .
# simple_producer, shipped beside the selector, needs the test-traffic feature.
RUN cargo build --release --locked --bins --features testkit \
 && install -m 0755 target/release/tail-sampling-selector target/release/simple_producer /usr/local/bin/

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# libcurl, OpenSSL and zlib are linked dynamically by librdkafka; curl serves
# the container healthcheck.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libcurl4 libssl3 zlib1g curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/tss --create-home tss
COPY --from=builder /usr/local/bin/tail-sampling-selector /usr/local/bin/simple_producer /usr/local/bin/
USER tss
WORKDIR /var/lib/tss
ENV TSS_LOG_FORMAT=json
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/health/live || exit 1
ENTRYPOINT ["tail-sampling-selector"]
