# Multi-stage build of a static wgkex on distroless. The entrypoint is the
# binary itself: `docker run IMAGE broker` / `IMAGE worker`, configured by
# /etc/wgkex.yaml or by the Python release's variables (WGKEX_DOMAINS,
# WGKEX_DOMAIN_PREFIXES, WGKEX_DEBUG, MQTT_BROKER_URL, MQTT_BROKER_PORT,
# MQTT_USERNAME, MQTT_PASSWORD, MQTT_KEEPALIVE, MQTT_TLS).
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X github.com/freifunkMUC/wgkex/cmd.version=${VERSION}" -o /out/wgkex .

FROM gcr.io/distroless/static-debian12
COPY --from=build /out/wgkex /usr/bin/wgkex
# The broker's HTTP API and (without MQTT_BROKER_URL) its embedded MQTT server.
EXPOSE 5000 1883
ENTRYPOINT ["/usr/bin/wgkex"]
CMD ["broker"]
