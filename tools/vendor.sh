#!/usr/bin/env bash
# Vendor the browser-side assets the site needs (MathJax 3, require.js, the ipywidgets
# HTML manager, the Noto Sans SC web font) into _vendor/vendor/, so pages render math, widgets
# and the glossary's Chinese offline, also on machines without a CJK font.
# They come from the npm registry and are kept out of git.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=_build/npm
mkdir -p "$tmp" _vendor/vendor
npm install --silent --no-audit --no-fund --prefix "$tmp" \
  mathjax@3 @jupyter-widgets/html-manager@1.0.6 requirejs@2.3.4 @fontsource/noto-sans-sc@5.3.1 >/dev/null
rm -rf _vendor/vendor/mathjax _vendor/vendor/html-manager _vendor/vendor/noto-sans-sc
cp -r "$tmp/node_modules/mathjax/es5" _vendor/vendor/mathjax
cp "$tmp/node_modules/requirejs/require.js" _vendor/vendor/require.js
cp -r "$tmp/node_modules/@jupyter-widgets/html-manager/dist" _vendor/vendor/html-manager
find _vendor/vendor -name '*.map' -delete
# Regular weight only, woff2 only (about 4 MB in ~100 unicode-range pieces: a page downloads just
# the pieces holding its characters; every browser that runs the site reads woff2, so the .woff
# fallbacks that 400.css also names are left out). The declared ranges are cut to CJK code points
# (U+2E80 and up): the font must stand first in a font stack, because Chromium does not look past
# a generic family such as system-ui for a missing glyph, and without its Latin glyphs it still
# leaves Latin text to the theme's fonts.
font=$tmp/node_modules/@fontsource/noto-sans-sc
mkdir -p _vendor/vendor/noto-sans-sc/files
cp "$font"/files/noto-sans-sc-*-400-normal.woff2 _vendor/vendor/noto-sans-sc/files/
python3 - "$font/400.css" _vendor/vendor/noto-sans-sc/cjk.css <<'PY'
import re, sys

FIRST_CJK = 0x2E80   # CJK Radicals Supplement; everything below is Latin, Greek, symbols, ...


def cjk_part(rng):
    lo, _, hi = rng[2:].partition("-")
    lo, hi = int(lo, 16), int(hi or lo, 16)
    if hi < FIRST_CJK:
        return None
    lo = max(lo, FIRST_CJK)
    return f"U+{lo:x}" if lo == hi else f"U+{lo:x}-{hi:x}"


faces = []
for face in re.findall(r"@font-face \{.*?\}", open(sys.argv[1]).read(), re.S):
    ranges = re.search(r"unicode-range: ([^;]+);", face)[1].split(",")
    kept = [p for p in (cjk_part(r.strip()) for r in ranges) if p]
    if kept:
        face = re.sub(r"src: [^;]+;", lambda m: m[0].split(", url(")[0] + ";", face)
        faces.append(re.sub(r"unicode-range: [^;]+;", f"unicode-range: {','.join(kept)};", face))
open(sys.argv[2], "w").write("\n\n".join(faces) + "\n")
PY
