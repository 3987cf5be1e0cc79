#!/bin/sh
# Refreshes openseadragon.min.js (and its licence) from the npm registry: the committed build
# step behind the copy built into `tessera serve`. The viewer never loads anything from a CDN:
# hospital machines are offline. Run from anywhere; needs npm.
set -eu
VERSION=6.1.1
# The tarball's SHA-256, checked so that a changed package is noticed.
SHA256=b4ab2942f33b90e0448e4d20fc5ed14cee049f1f3ae49d70afd4b05e9a2f92d0
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
npm pack --silent "openseadragon@$VERSION" >/dev/null
echo "$SHA256  openseadragon-$VERSION.tgz" | sha256sum -c -
tar xzf "openseadragon-$VERSION.tgz"
cp package/build/openseadragon/openseadragon.min.js "$here/openseadragon.min.js"
cp package/LICENSE.txt "$here/openseadragon-LICENSE.txt"
echo "openseadragon $VERSION -> $here"
