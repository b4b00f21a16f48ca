# Dockerfile — builds userstatus-worker, userstatus-query and userstatus-notify from source on Debian 12
# (build stage) and ships them with only the runtime libraries (runtime stage). One image for all:
#   docker run IMAGE userstatus-query  --config /etc/userstatus/config.json
#   docker run IMAGE userstatus-worker --config /etc/userstatus/config.json
#   docker run IMAGE userstatus-notify --config /etc/userstatus/config.json
# See docker-compose.yml for the whole stack.

FROM debian:12 AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config \
      librdkafka-dev libhiredis-dev libmsgpack-dev libmicrohttpd-dev libjansson-dev libcmocka-dev \
      libgrpc-dev libprotobuf-c-dev protobuf-c-compiler protobuf-compiler \
      libcurl4-openssl-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN rm -rf build build-asan \
 && cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
 && cmake --build build -j"$(nproc)" --target userstatus-worker userstatus-query userstatus-notify \
 && install -D -m 0755 build/worker/userstatus-worker /out/usr/local/bin/userstatus-worker \
 && install -D -m 0755 build/query/userstatus-query /out/usr/local/bin/userstatus-query \
 && install -D -m 0755 build/notify/userstatus-notify /out/usr/local/bin/userstatus-notify \
 && install -D -m 0644 schemas/examples/compose.json /out/etc/userstatus/config.json

FROM debian:12-slim AS runtime
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      librdkafka1 libhiredis0.14 libmsgpackc2 libmicrohttpd12 libjansson4 libgrpc29 libprotobuf-c1 libcurl4 libssl3 \
      ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --no-create-home --shell /usr/sbin/nologin userstatus
COPY --from=build /out/ /
USER userstatus
EXPOSE 8000 9100 10000
CMD ["userstatus-query", "--config", "/etc/userstatus/config.json"]
