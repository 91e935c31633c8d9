# bakery's three images, for linux/amd64 and linux/arm64, from one file:
#
#   --target controller   the controller: a static binary on distroless/static
#   --target agent        the agent: bakery-agent added to the Kaniko executor
#   --target client       the `bakery` CLI on Alpine (the GitLab component's job image)
#
# `make bake` builds and pushes all three by running bakery on this
# repository (compose.bake.yaml): each arch is compiled natively on an agent
# of that arch, no emulation. BINARIES=prebuilt takes the binaries from
# dist/<arch>/ in the context instead of compiling (release binaries from
# scripts/release, or the test suite's own build).

ARG RUST_IMAGE=docker.io/library/rust:1.95-alpine
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot
# The client runs as a GitLab CI job image, and GitLab needs a shell there.
ARG CLIENT_IMAGE=docker.io/library/alpine:3.22
# Kaniko upstream (GoogleContainerTools) was archived in June 2025. The
# community fork osscontainertools/kaniko keeps releasing the executor with
# the same flags and layout (/kaniko/executor, /kaniko/.docker) and fixes;
# Chainguard's fork publishes free images only as :latest. The -debug variant
# carries busybox, which pre-script and post-script need for `sh`.
ARG KANIKO_IMAGE=ghcr.io/osscontainertools/kaniko:v1.28.3-debug
ARG BINARIES=compiled

# ---- the binaries, compiled here (musl: static) ---------------------------
FROM ${RUST_IMAGE} AS compiled
RUN apk add --no-cache musl-dev build-base cmake
WORKDIR /src
COPY . .
# The client alone first: built together, cargo would give it the
# controller's ECS and Kubernetes features too; and small, in Cargo.toml's
# `client` profile (see scripts/release).
RUN cargo build --profile client --locked -p bakery --bin bakery \
 && cargo build --release --locked --bin bakery-controller --bin bakery-agent \
 && mkdir -p /out \
 && cp target/client/bakery target/release/bakery-controller target/release/bakery-agent /out/ \
 && strip /out/*

# ---- or taken from dist/<arch>/ -------------------------------------------
FROM scratch AS prebuilt
ARG TARGETARCH
COPY dist/${TARGETARCH}/bakery dist/${TARGETARCH}/bakery-controller dist/${TARGETARCH}/bakery-agent /out/

FROM ${BINARIES} AS binaries

# ---- controller -----------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS controller
COPY --from=binaries /out/bakery-controller /usr/local/bin/bakery-controller
# DATA_DIR defaults to $TMPDIR/bakery-controller; mount a volume and set
# DATA_DIR (as examples/server/k8s does) so a restart resumes builds.
ENV LISTEN_ADDR=0.0.0.0:8080 LOG_FORMAT=json
EXPOSE 8080
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/bakery-controller"]

# ---- agent ----------------------------------------------------------------
FROM ${KANIKO_IMAGE} AS agent
COPY --from=binaries /out/bakery-agent /kaniko/bakery-agent
# Kaniko ignores /kaniko when it snapshots, so the work dir never ends up in
# an image it builds.
ENV BAKERY_BUILDER=kaniko BAKERY_WORK_DIR=/kaniko/work
ENTRYPOINT ["/kaniko/bakery-agent"]

# ---- client ---------------------------------------------------------------
FROM ${CLIENT_IMAGE} AS client
COPY --from=binaries /out/bakery /usr/local/bin/bakery
ENTRYPOINT ["/usr/local/bin/bakery"]
