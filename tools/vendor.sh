#!/usr/bin/env bash
# Vendor the browser-side assets the site needs (MathJax 3, require.js, the ipywidgets
# HTML manager) into _vendor/vendor/, so pages render math and widgets offline.
# They come from the npm registry and are kept out of git.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=_build/npm
mkdir -p "$tmp" _vendor/vendor
npm install --silent --no-audit --no-fund --prefix "$tmp" \
  mathjax@3 @jupyter-widgets/html-manager@1.0.6 requirejs@2.3.4 >/dev/null
rm -rf _vendor/vendor/mathjax _vendor/vendor/html-manager
cp -r "$tmp/node_modules/mathjax/es5" _vendor/vendor/mathjax
cp "$tmp/node_modules/requirejs/require.js" _vendor/vendor/require.js
cp -r "$tmp/node_modules/@jupyter-widgets/html-manager/dist" _vendor/vendor/html-manager
find _vendor/vendor -name '*.map' -delete
