# syntax=docker/dockerfile:1
#
# The dronehub worker as a small static image: a Go build stage, then the
# binary alone on distroless/static (CA certificates, tzdata, /etc/passwd, no
# shell), running as the unprivileged user 65532. See docs/deploy.md.
#
#   docker build -t dronehub:dev .
#   docker run --rm -p 8080:8080 -e DRONEHUB_API_KEYS_FILE=/run/secrets/api-keys \
#     -v "$PWD/api-keys:/run/secrets/api-keys:ro" dronehub:dev
#
# Configuration is the worker's flags or their DRONEHUB_* environment twins
# (README "Worker settings"); secrets come from the environment or mounted
# files, never from the image.

# Keep in step with the go directive of go.mod (deploy/dockerfile_test.go checks).
ARG GO_VERSION=1.26.8

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
ARG TARGETOS
ARG TARGETARCH
WORKDIR /src
# Modules first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
# CGO_ENABLED=0: the SQLite driver is pure Go (modernc.org/sqlite), so the
# binary is static and needs no libc in the image.
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -trimpath -ldflags='-s -w' -o /out/dronehub ./cmd/dronehub \
    && mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/dronehub /dronehub
# A working directory the worker may write to: the default SQLite task hub
# (dronehub.db) lands here. Mount a volume on /data to keep it.
COPY --from=build --chown=65532:65532 /out/data /data
WORKDIR /data
# distroless's "nonroot"; numeric so that Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
# In a container 127.0.0.1 is reachable from nowhere: listen on every interface.
# The worker then refuses to start without API keys (or --insecure).
ENV DRONEHUB_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["/dronehub", "worker"]
