# syntax=docker/dockerfile:1
# The operator image: one static binary (and the kubectl plugin) and the CA certificates, on an
# empty base, non-root.
# Build: docker build -t <your-registry>/connector-operator:<version> .
FROM rust:1.95-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add "$(uname -m)-unknown-linux-musl"
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(uname -m)-unknown-linux-musl" \
    && cargo build --release --locked --target "$target" --bin connector-operator --bin kubectl-connector \
    && install -m 0755 "target/$target/release/connector-operator" /connector-operator \
    && install -m 0755 "target/$target/release/kubectl-connector" /kubectl-connector

# No shell, no package manager, no libc: the binary is static (musl), TLS roots from the builder.
FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /connector-operator /connector-operator
# The kubectl plugin, for `kubectl cp` or `docker cp` onto a workstation, or a debug container.
COPY --from=build /kubectl-connector /kubectl-connector
# A numeric non-root user, so that Kubernetes can verify runAsNonRoot.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/connector-operator"]
