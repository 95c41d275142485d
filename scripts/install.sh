#!/usr/bin/env bash
# Installs everything sage_fast needs on a fresh Debian/Ubuntu machine, then sage_fast itself.
# Idempotent: safe to run again. Used by the README's two commands and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

SYSTEM_PACKAGES=(ffmpeg espeak-ng fonts-dejavu-core pkg-config cmake
                 libavformat-dev libavcodec-dev libavutil-dev libswscale-dev libswresample-dev)
missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "== installing system packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
echo "== installing Python packages"
# torch first and pinned: 2.13.0 is the CPU build that installs from local disk here; an unpinned
# torch would pull a multi-GB CUDA build. torchcodec 0.13.0 is its matching CPU build.
$PY -m pip install -q --disable-pip-version-check "torch==2.13.0" "torchcodec==0.13.0"
$PY -m pip install -q --disable-pip-version-check -e ".[test]"
$PY -c "import sage_fast._C as C; print('== sage_fast core:', C.build_info())"
