# The `portcullis` image (deploy/daemonset.yaml runs it). Not built in CI: the project's
# machines have no container engine. Build and push with, for example:
#   docker build --build-arg PORTCULLIS_COMMIT=$(git rev-parse --short=12 HEAD)$(git diff --quiet HEAD || echo -dirty) \
#     -t registry.example.com/portcullis:0.1.0 .
#   docker push registry.example.com/portcullis:0.1.0
# then point deploy/kustomization.yaml (images:) at it.

# --- build -------------------------------------------------------------------------
# Debian bookworm, like the runtime stage, so the binary links against the same glibc
# and libelf it will find there. The toolchain must satisfy the newest rust-version
# among the dependencies (kube 5 needs 1.89), not only the workspace's own.
FROM rust:1.95-bookworm AS build
# What xsk-rs -> libxdp-sys / libbpf-sys need to build (as scripts/install-deps.sh installs):
# libelf-dev (gelf.h), clang (BPF objects, bindgen), m4 and libpcap-dev (libxdp's
# configure), pkg-config, zlib1g-dev.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libelf-dev clang m4 libpcap-dev pkg-config zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The commit `portcullis --version`, /status and portcullis_build_info name (the build
# context leaves .git out, so control/build.rs cannot ask git): "unknown" when not given.
ARG PORTCULLIS_COMMIT=unknown
ENV PORTCULLIS_COMMIT=${PORTCULLIS_COMMIT}
# --locked: build exactly the dependency versions the repository was tested with.
RUN cargo build --release --locked -p control \
 && install -D -m 0755 target/release/portcullis /out/portcullis

# --- runtime -----------------------------------------------------------------------
FROM debian:bookworm-slim
# libbpf is linked statically into the binary, but it uses the system's libelf and zlib
# (libelf1 pulls in zlib1g). ca-certificates: for a kubeconfig pointing at a public CA;
# in-cluster the service account's CA bundle is used.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libelf1 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/portcullis /usr/local/bin/portcullis
# Root, deliberately. AF_XDP needs capabilities in the process's effective set, and
# Kubernetes only puts added capabilities there for UID 0: it has no ambient
# capabilities, and file capabilities (setcap on the binary) would only work with
# allowPrivilegeEscalation: true, which the DaemonSet forbids. The DaemonSet drops every
# capability but NET_ADMIN, NET_RAW, BPF and IPC_LOCK, makes the root filesystem
# read-only and mounts nothing from the host, so this root holds only those four.
USER 0:0
EXPOSE 9877
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["run", "--kube"]
