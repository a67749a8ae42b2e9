#!/usr/bin/env bash
# Prepares .whl/ (git-ignored) for benchmarks/device_gateway_peers.sh: modelyard's runtime dependencies and
# vllm-router as Python 3.12 x86_64 wheels (not asyncpg: only PostgreSQL stores import it; not uvloop: the image
# has it), plus .whl/src.tar.gz, a `git archive` of the commit to measure (default HEAD).
# usage: benchmarks/device_wheels.sh [COMMIT]
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 \
    --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 -d .whl \
    aiohttp==3.14.5 multidict==7.2.1 yarl==1.25.1 propcache==0.5.4 frozenlist==1.8.0 aiosignal==1.4.0 \
    aiohappyeyeballs==2.7.1 orjson==3.13.0 pydantic==2.14.3 pydantic_core==2.50.4 \
    typing-inspection==0.4.5 annotated-types==0.8.0 redis==8.1.0 starlette==1.10.0 uvicorn==0.54.0 httptools==0.9.0 \
    click==8.5.1 rich==15.0.0 psutil==7.2.2 \
    setproctitle==1.3.8 fastapi==0.165.0 opentelemetry-api==1.45.2 py-spy==0.4.3 msgspec==0.22.0 pyzmq==27.3.0 \
    "grafana-foundation-sdk==1769699379!11.6.0"  # deploy/grafana.py, imported by the CLI: not in the image
# vllm-router's wheel (24 MB) re-packed with xz (17 MB): the carry must fit beside the working tree in 64 MiB
if [ ! -f .whl/vllm_router.tar.xz ]; then
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
      -d "$tmp" vllm-router==0.1.17
  (cd "$tmp" && unzip -q vllm_router-*.whl && rm vllm_router-*.whl && tar cJf - .) > .whl/vllm_router.tar.xz
  rm -rf "$tmp"
fi
rm -f .whl/vllm_router-*.whl
COMMIT=${1:-HEAD}
git archive "$COMMIT" modelyard benchmarks/lib.sh benchmarks/gateway_peers.sh benchmarks/gateway_peers_report.py \
    benchmarks/mock_upstream.py pyproject.toml | gzip -9 > .whl/src.tar.gz
git rev-parse --short "$COMMIT" > .whl/src.commit
du -sh .whl
