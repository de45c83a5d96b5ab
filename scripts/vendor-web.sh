#!/usr/bin/env bash
# Refreshes the chat page's third-party libraries in web/vendor from the npm registry, at the pinned versions
# below, checking each package against the registry's integrity hash. Only needed to change a version: the
# files are committed, and stove needs no build step and no network to serve them.
#
#   scripts/vendor-web.sh
set -euo pipefail
cd "$(dirname "$0")/.."

MARKED=18.2.1          # Markdown to HTML (MIT)
HIGHLIGHT=11.12.0      # syntax highlighting, the common-languages build (BSD-3-Clause)
DOMPURIFY=3.4.18       # sanitizes the HTML a model writes before the page shows it (Apache-2.0 or MPL-2.0)
PDFJS=6.5.438          # Mozilla's pdf.js: the text layer of attached PDFs, with its worker and CJK maps (Apache-2.0)
MAMMOTH=1.13.0         # the text of attached Word documents (.docx) (BSD-2-Clause)
MINISEARCH=7.2.0       # BM25 search over the passages of attached documents too long for the context (MIT)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# fetch PACKAGE VERSION: unpacks the registry's tarball into $work/PACKAGE after checking its sha512.
fetch() {
    local package=$1 version=$2 dir="$work/${1//\//_}"
    local integrity tarball
    integrity=$(npm view "$package@$version" dist.integrity)
    (cd "$work" && npm pack --silent "$package@$version" >/dev/null)
    tarball=$(ls "$work"/*.tgz)
    local actual="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
    [[ $actual == "$integrity" ]] || { echo "$package@$version: integrity $actual, expected $integrity" >&2; exit 1; }
    mkdir -p "$dir" && tar xzf "$tarball" -C "$dir" && rm "$tarball"
    echo "$package@$version $integrity"
}

rm -rf web/vendor && mkdir -p web/vendor/{marked,highlight,dompurify,pdfjs,mammoth,minisearch}
{
    echo "# Third-party code of the chat page"
    echo
    echo "Fetched by \`scripts/vendor-web.sh\` from the npm registry; each line: package@version and the"
    echo "registry's integrity hash of the tarball it came from. Each folder holds the license."
    echo
    echo '```'
    fetch marked "$MARKED"
    fetch @highlightjs/cdn-assets "$HIGHLIGHT"
    fetch dompurify "$DOMPURIFY"
    fetch pdfjs-dist "$PDFJS"
    fetch mammoth "$MAMMOTH"
    fetch minisearch "$MINISEARCH"
    echo '```'
} > web/vendor/README.md

cp "$work/marked/package/lib/marked.umd.js" web/vendor/marked/
cp "$work/marked/package/LICENSE" web/vendor/marked/LICENSE.txt
cp "$work/@highlightjs_cdn-assets/package/highlight.min.js" web/vendor/highlight/
cp "$work/@highlightjs_cdn-assets/package/LICENSE" web/vendor/highlight/LICENSE.txt
cp "$work/dompurify/package/dist/purify.min.js" web/vendor/dompurify/
cat "$work/dompurify/package/LICENSE" "$work/dompurify/package/LICENSE-MPL" > web/vendor/dompurify/LICENSE.txt
# pdf.js: the library, its worker (text is extracted off the page's thread) and the packed character maps
# that CJK PDFs need for their text; its fonts and image decoders serve drawing pages, which the page never does.
cp "$work/pdfjs-dist/package/build/pdf.min.mjs" "$work/pdfjs-dist/package/build/pdf.worker.min.mjs" web/vendor/pdfjs/
cp -r "$work/pdfjs-dist/package/cmaps" web/vendor/pdfjs/
cp "$work/pdfjs-dist/package/LICENSE" web/vendor/pdfjs/LICENSE.txt
cp "$work/mammoth/package/mammoth.browser.min.js" web/vendor/mammoth/
cp "$work/mammoth/package/LICENSE" web/vendor/mammoth/LICENSE.txt
cp "$work/minisearch/package/dist/es/index.js" web/vendor/minisearch/minisearch.js
cp "$work/minisearch/package/LICENSE.txt" web/vendor/minisearch/LICENSE.txt
echo "web/vendor updated:"
find web/vendor -type f | sort
