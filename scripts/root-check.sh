#!/usr/bin/env bash
# Can this machine run the root-only parts (network namespaces, veth, AF_XDP)?
# The shell side of the rule the Rust tests follow (dataplane::testing::root):
#
#   exit 0  yes: root, `ip` present, and a network namespace can really be created;
#   exit 2  no, and PORTCULLIS_REQUIRE_ROOT_TESTS is not 1: prints "SKIP: <why>";
#   exit 1  no, and PORTCULLIS_REQUIRE_ROOT_TESTS=1 (CI): prints an error with <why>.
#
# Usage: scripts/root-check.sh [WHAT]   (WHAT names the caller in the messages)
set -uo pipefail
what=${1:-this}
why=""
if [ "$(id -u)" -ne 0 ]; then
  why="not root"
elif ! command -v ip >/dev/null; then
  why="ip is missing (run scripts/install-deps.sh)"
else
  ns="pcl-check-$$"
  ip netns del "$ns" 2>/dev/null
  if err=$(ip netns add "$ns" 2>&1); then
    ip netns del "$ns"
  else
    why="root, but \`ip netns add\` fails: $err"
  fi
fi
[ -z "$why" ] && exit 0
if [ "${PORTCULLIS_REQUIRE_ROOT_TESTS:-0}" = 1 ]; then
  echo "error: PORTCULLIS_REQUIRE_ROOT_TESTS=1 and $what cannot run: $why" >&2
  exit 1
fi
echo "SKIP: $why"
exit 2
