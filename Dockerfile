# Builds the lunchrush binary for compose.yaml.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin lunchrush

FROM debian:bookworm-slim
COPY --from=build /src/target/release/lunchrush /usr/local/bin/lunchrush
ENTRYPOINT []
