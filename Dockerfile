# syntax=docker/dockerfile:1
#
# affinity-assistant: a static binary on a distroless, non-root base.
# Build: hack/build-image.sh (or: docker build -t affinity-assistant:dev .)

# --- build: musl (Alpine's native target) links statically by default -----------------------
FROM docker.io/library/rust:1.95-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
# Dependencies first, so that a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && for b in core webhook_load controller; do echo 'fn main() {}' > benches/$b.rs; done \
    && cargo build --release --locked --bin affinity-assistant \
    && rm -rf src benches
COPY src ./src
COPY benches ./benches
# Touch so cargo sees the real sources as newer than the dependency-only build's stubs.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin affinity-assistant \
    && cp target/release/affinity-assistant /affinity-assistant \
    && /affinity-assistant version

# --- runtime: no shell, no package manager, uid 65532 --------------------------------------
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /affinity-assistant /affinity-assistant
USER 65532:65532
EXPOSE 8443 8080
ENTRYPOINT ["/affinity-assistant"]
CMD ["run"]
