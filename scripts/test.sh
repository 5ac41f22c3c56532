#!/usr/bin/env bash
# The whole test suite from a fresh machine: dependencies, the default guest, build, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-dependencies.sh
scripts/fetch-default-guest.sh >/dev/null
scripts/host-kvm-report.sh
swift build --build-tests
# The Linux boots under tcg run the release keel (the debug build is ~10x slower).
swift build -c release --product keel
exec swift test --skip-build
