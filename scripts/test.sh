#!/usr/bin/env bash
# The whole test suite from a fresh machine: dependencies, the default guest, build, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-dependencies.sh
scripts/fetch-default-guest.sh >/dev/null
scripts/host-kvm-report.sh
swift build --build-tests
exec swift test --skip-build
