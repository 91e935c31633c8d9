# bakery builds itself.
#
#   make bake       build and push bakery-controller, bakery-agent and
#                   bakery-client for linux/amd64 and linux/arm64 by running
#                   bakery on this repository (compose.bake.yaml)
#   make release    static release binaries and checksums in dist/ (musl)
#
# Variables (all optional):
#   REGISTRY        where the images go                    (ghcr.io/example)
#   VERSION         their tag                              (git describe)
#   BAKERY          the bakery client to run               (bakery on PATH)
#   CONTROLLER_URL  a controller with amd64 and arm64 agents (ECS or k8s), and
#   CONTROLLER_TOKEN  its token; unset, the embedded local controller builds
#                   (arm64 then needs BINARIES=prebuilt: no emulation)
#   BAKE_CONFIG     a config.yaml merged under the compose file, e.g. with
#                   kaniko-credentials for REGISTRY (for ECR, the runner's
#                   docker-credential-ecr-login login is used)
#   BINARIES        compiled (default: cargo build in the image) or prebuilt
#                   (dist/<arch>/ from `make release`)
#   RUNTIME_IMAGE, CLIENT_IMAGE, KANIKO_IMAGE   base images (see Dockerfile)

REGISTRY ?= ghcr.io/example
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
BAKERY ?= bakery
BINARIES ?= compiled
export REGISTRY VERSION BINARIES

.PHONY: bake release

bake:
	$(BAKERY) build --compose compose.bake.yaml --async $(if $(BAKE_CONFIG),--config $(BAKE_CONFIG))

release:
	bash scripts/release
