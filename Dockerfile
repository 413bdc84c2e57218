# The nanofaas host. Build: docker build -t ghcr.io/nanofaas/nanofaas:0.1.0 .
FROM rust:1.95-bookworm AS build
RUN rustup target add wasm32-wasip2
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin nanofaas

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates tini && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/nanofaas /usr/local/bin/nanofaas
# The embedded store lives on a volume (mount one to keep state across containers).
RUN mkdir -p /var/lib/nanofaas && chown 65532:65532 /var/lib/nanofaas
ENV NANOFAAS_STORE=sqlite:/var/lib/nanofaas/nanofaas.db
VOLUME /var/lib/nanofaas
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["/usr/bin/tini", "--", "nanofaas"]
CMD ["serve"]
