# anomalyd: `docker build -t anomalyd .`, then
#   docker run -p 8080:8080 -v anomalyd-data:/data anomalyd
# The runtime stage is distroless (glibc, no shell): the health check is the
# binary itself. Both base images are named by build arguments, so a machine
# without a registry can build stand-ins locally under the same names
# (deploy/images/build-base-images.sh).
ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# Dependencies first, so a source change does not rebuild them.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
RUN mkdir -p src benches && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > benches/checkpoint_store.rs \
    && cargo build --release --locked --bin anomalyd 2>/dev/null || true
COPY src src
# The manifest names the benchmarks: their sources must be there to parse it.
COPY benches benches
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin anomalyd \
    && strip target/release/anomalyd \
    && mkdir -p /out/data && cp target/release/anomalyd /out/anomalyd

FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="anomalyd" \
      org.opencontainers.image.description="Streaming anomaly detection: a recurrent autoencoder per stream, Prometheus remote_write in, scores and Alertmanager alerts out." \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/anomalyd /usr/local/bin/anomalyd
# The data directory, owned by the non-root user the image runs as.
COPY --from=build --chown=65532:65532 /out/data /data
USER 65532:65532
ENV ANOMALYD_LISTEN=0.0.0.0:8080 \
    ANOMALYD_DATA_DIR=/data \
    ANOMALYD_LOG_FORMAT=json
VOLUME ["/data"]
EXPOSE 8080
# Exec form: anomalyd is PID 1 and handles SIGTERM itself (final snapshot).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/anomalyd", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/anomalyd"]
CMD ["serve"]
