#!/usr/bin/env bash
# Install everything deepafx needs on a fresh Debian 12 machine (run as root or with sudo).
#   scripts/install.sh          system packages + the package
#   scripts/install.sh --test   the same plus test dependencies
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  zam-plugins            # Zam VST3/VST2 effects (ZaMultiCompX2, ZamGEQ31, ZaMaximX2 …)
  lsp-plugins-vst        # LSP VST2 compressors, multiband compressors, EQs, limiters
  dragonfly-reverb-vst   # Dragonfly VST2 reverbs
  dpf-plugins-vst        # DPF VST2 effects
  amsynth                # amsynth VST2 synthesizer (instrument backend)
  lilv-utils liblilv-0-0 # LV2 host library (backend lv2) and lv2ls/lv2info
  lsp-plugins-lv2        # LSP LV2 compressors, EQs, limiters (chains/lsp_mastering_lv2.yaml)
  x42-plugins            # x42 LV2 EQ and dynamics
  guitarix-lv2           # guitarix LV2 tube amplifiers (chains/guitarix_amp.yaml)
  fluid-soundfont-gm     # FluidR3_GM SoundFont: real scores → audio
  fluidsynth libfluidsynth3
)

# tests only: Ardour 7's headless tools (ardour7-lua, ardour7-export) render the sessions `deepafx export` writes
if [ "${1:-}" = "--test" ]; then APT_PACKAGES+=(ardour); fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if command -v apt-get >/dev/null 2>&1; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "[install] apt-get install ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # the mastering recipe fetches Debian's soundtrack packages with `apt-get download` (no root): it needs the lists
  if ! apt-cache show singularity-music >/dev/null 2>&1; then
    echo "[install] apt-get update (package lists for the soundtrack data)"
    $SUDO apt-get update -qq
  fi
else
  echo "[install] apt-get not found: install ${APT_PACKAGES[*]} with your package manager" >&2
fi

# torch first and pinned: the CPU build 2.13.0 (a looser range pulls several GB of CUDA wheels).
# The package pulls in the rest, ray (the multi-machine render engine) included.
python -m pip install -q "torch==2.13.0"
extra=""
if [ "${1:-}" = "--test" ]; then extra="[test]"; fi
python -m pip install -q -e ".${extra}"
echo "[install] done"
