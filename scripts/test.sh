#!/usr/bin/env bash
# Runs every test of the project. Installs what the build and the tests need
# first (Debian packages, kernel settings): see scripts/install-deps.sh.
# Tests that need root (network namespaces, AF_XDP) run when root and say
# clearly when they skip for a missing capability; with
# PORTCULLIS_REQUIRE_ROOT_TESTS=1 (as .ci/run sets) a missing capability is a
# failure instead.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo test --workspace --all-targets "$@"
cargo test --workspace --doc
