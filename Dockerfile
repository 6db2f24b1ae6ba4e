# syntax=docker/dockerfile:1
# The controller image: `cohort controller` in the cluster (manifests/controller/deployment.yaml
# runs it as user 65532 with a read-only root filesystem). From the repository root:
#   docker build -t ghcr.io/example/cohort-controller:0.1.0 .
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and build outputs between builds; the binary is copied out of
# the cached target directory. Without default features the binary leaves out the lab (`cohort
# lab`, `simulate`, `analyze`): the controller image does not build it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --release -p cohort --no-default-features --bin cohort \
 && install -D target/release/cohort /out/cohort

# glibc and CA certificates, no shell, no package manager; "nonroot" is uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/cohort /usr/local/bin/cohort
USER 65532:65532
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/cohort"]
CMD ["controller"]
