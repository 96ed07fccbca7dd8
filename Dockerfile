# syntax=docker/dockerfile:1.7
# One Dockerfile, three images: `docker build --target <controller>` (make docker-build).
#
# The build stage compiles all three binaries once, statically linked against musl (Alpine's
# Rust toolchain targets x86_64/aarch64-unknown-linux-musl natively; TLS is rustls + ring, so
# nothing links OpenSSL or glibc). Each final image is distroless/static:nonroot: no shell, no
# package manager, CA certificates and tzdata only, user 65532 — what the chart's restricted
# securityContext (runAsNonRoot, readOnlyRootFilesystem) expects.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
# Every workspace member's manifest must be present for Cargo to resolve the workspace.
COPY Cargo.toml Cargo.lock ./
COPY crates crates
COPY e2e e2e
ENV CARGO_PROFILE_RELEASE_STRIP=symbols \
    CARGO_PROFILE_RELEASE_CODEGEN_UNITS=4 \
    CARGO_TERM_COLOR=never
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p dns-forwarder -p tunnel-manager -p exip-syncer \
 && mkdir /out \
 && cp target/release/dns-forwarder target/release/tunnel-manager target/release/exip-syncer /out/

FROM gcr.io/distroless/static-debian12:nonroot AS runtime
LABEL org.opencontainers.image.source="https://github.com/kubeovn-multivpc/kubeovn-multivpc" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 65532:65532

FROM runtime AS dns-forwarder
LABEL org.opencontainers.image.title="dns-forwarder"
COPY --from=build /out/dns-forwarder /usr/local/bin/dns-forwarder
ENTRYPOINT ["/usr/local/bin/dns-forwarder"]

FROM runtime AS tunnel-manager
LABEL org.opencontainers.image.title="tunnel-manager"
COPY --from=build /out/tunnel-manager /usr/local/bin/tunnel-manager
ENTRYPOINT ["/usr/local/bin/tunnel-manager"]

FROM runtime AS exip-syncer
LABEL org.opencontainers.image.title="exip-syncer"
COPY --from=build /out/exip-syncer /usr/local/bin/exip-syncer
ENTRYPOINT ["/usr/local/bin/exip-syncer"]
