#!/usr/bin/env bash
# Full test suite: installs what the tests need (Debian packages) when it is
# missing, then runs every test with the race detector. As root, a missing
# dependency fails the tests instead of skipping them.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/sbin:/sbin

need=()
command -v mosquitto >/dev/null || need+=(mosquitto)
command -v mosquitto_pub >/dev/null || need+=(mosquitto-clients)
command -v wg >/dev/null || need+=(wireguard-tools)
command -v ip >/dev/null || need+=(iproute2)
command -v bridge >/dev/null || need+=(iproute2)
command -v ping >/dev/null || need+=(iputils-ping)
command -v unshare >/dev/null || need+=(util-linux)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v man >/dev/null || need+=(man-db)
command -v busybox >/dev/null || need+=(busybox)      # nslookup/wget of the Gluon node replay
command -v promtool >/dev/null || need+=(prometheus)  # alerting rules check and unit tests
command -v signify-openbsd >/dev/null || need+=(signify-openbsd)  # verifies parker signatures
command -v etcd >/dev/null || need+=(etcd-server)     # address management on etcd
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "missing Debian packages: ${need[*]} (run as root to install them); dependent tests will skip" >&2
  fi
fi
# goreleaser (for the goreleaser.yaml check), from the Go module proxy; the
# newest releases need a newer Go than this machine's.
export PATH=$PATH:$(go env GOPATH)/bin
if ! command -v goreleaser >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "installing goreleaser (go install, about 2 minutes)"
  GOFLAGS= go install github.com/goreleaser/goreleaser/v2@v2.14.0
fi
# staticcheck, pinned, beside go vet.
if ! command -v staticcheck >/dev/null; then
  echo "installing staticcheck v0.8.2 (go install)"
  GOFLAGS= go install honnef.co/go/tools/cmd/staticcheck@v0.8.2
fi
# Tests start their own Mosquitto on free ports (the package's system
# instance, if any, is not used).
if [ "$(id -u)" = 0 ]; then
  export WGKEX_TEST_REQUIRE_ALL=1
fi
go vet ./...
staticcheck ./...
go test -race -count=1 -timeout 15m ./... "$@"
