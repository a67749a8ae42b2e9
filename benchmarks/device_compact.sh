#!/usr/bin/env bash
# Packs .whl/ (made by benchmarks/device_wheels.sh) smaller, for when the tree and the carry no longer fit the device
# tool's 64 MiB together: every wheel installed (pip --target, CPython 3.12, manylinux x86_64) into one folder with
# vllm-router's files, the shared objects stripped of their symbol tables (`strip -s`), and that folder as
# .whl/vllm_router.tar.xz (xz -9e), which benchmarks/device_gateway_peers.sh unpacks into its site folder as it did
# vllm-router alone; the wheels are removed. 27.6 MB of wheels -> 18.6 MB; NO_VLLM_ROUTER=1 leaves vllm-router out
# (3.5 MB; run gateway_peers.sh with --no-vllm-router then).
# usage: benchmarks/device_compact.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .whl/vllm_router.tar.xz ] || { echo ".whl/ first: benchmarks/device_wheels.sh"; exit 2; }
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
platforms=()
for p in manylinux_2_28 manylinux_2_27 manylinux_2_26 manylinux_2_17 manylinux2014 manylinux_2_12 manylinux2010 \
         manylinux_2_5 manylinux1; do platforms+=(--platform "${p}_x86_64"); done
python3 -m pip install -q --target "$site" --no-deps --no-compile --no-index --only-binary=:all: \
    --python-version 3.12 --implementation cp "${platforms[@]}" .whl/*.whl
rm -rf "$site/bin"
[ -n "${NO_VLLM_ROUTER:-}" ] || tar xJf .whl/vllm_router.tar.xz -C "$site"
find "$site" -name "*.so*" -type f -exec strip -s {} \; 2>/dev/null || true
tar cf - -C "$site" . | xz -9e -T0 > .whl/vllm_router.tar.xz.new
mv .whl/vllm_router.tar.xz.new .whl/vllm_router.tar.xz
rm -f .whl/*.whl
du -sh .whl
