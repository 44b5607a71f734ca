#!/usr/bin/env bash
# Re-fetch the dashboard's charting library, uPlot (MIT), from the npm registry into the service's static
# files. The dashboard never loads anything from a CDN: the machines that run it may be offline, so the
# library is vendored (committed) and this script is only for upgrading it.
#
#   bash scripts/fetch_uplot.sh            # the pinned version below
#   bash scripts/fetch_uplot.sh 1.6.33     # another version (then update UPLOT_VERSION here and the docs)
set -euo pipefail

UPLOT_VERSION="${1:-1.6.32}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/service/api/static/vendor/uplot"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

cd "$WORK"
npm pack "uplot@${UPLOT_VERSION}" --silent >/dev/null
tar xzf "uplot-${UPLOT_VERSION}.tgz"
mkdir -p "$DEST"
cp package/dist/uPlot.iife.min.js package/dist/uPlot.min.css package/LICENSE "$DEST/"
{
    echo "uPlot ${UPLOT_VERSION} (https://github.com/leeoniya/uPlot), MIT license (LICENSE in this folder)."
    echo "From the npm registry: npm pack uplot@${UPLOT_VERSION}; sha512 of the tarball:"
    echo "$(sha512sum "uplot-${UPLOT_VERSION}.tgz" | cut -d' ' -f1)"
    echo "Files: dist/uPlot.iife.min.js, dist/uPlot.min.css, LICENSE. Re-fetch: bash scripts/fetch_uplot.sh"
} > "$DEST/VERSION"
echo "uPlot ${UPLOT_VERSION} -> $DEST"
