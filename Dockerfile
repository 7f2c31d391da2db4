# keyrelay image: build in the Rust image, run on a slim Debian as an unprivileged user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p keyrelay -p keyrelay-mock

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --no-create-home keyrelay
COPY --from=build /src/target/release/keyrelay /src/target/release/keyrelay-mock /usr/local/bin/
USER keyrelay
EXPOSE 8080 9091
CMD ["keyrelay", "--config", "/etc/keyrelay/keyrelay.toml"]
