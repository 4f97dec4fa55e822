"""DX7 presets: factory banks, sampling around them, and ``.syx`` files.

Presets are handled as *normalized Dexed vectors* ``(145,)`` on [0, 1] in the
order of :func:`deepafx.hosts.dexed_host.dexed_param_table` (the ``dexed.Preset``
layout). This module reads the real DX7 factory voices that Debian's ``hexter``
package ships, samples presets around them, and writes/reads DX7 system-exclusive
files:

* single voice (VCED): ``F0 43 00 00 01 1B`` + 155 data bytes + checksum + ``F7``
  (163 bytes) — what a DX7 receives as an edit-buffer dump;
* 32-voice bank (VMEM): ``F0 43 00 09 20 00`` + 32 × 128 packed bytes + checksum +
  ``F7`` (4104 bytes) — a cartridge, what Dexed's cartridge manager loads.

The checksum is the low seven bits of the two's complement of the data sum
(Yamaha DX7 owner's manual, MIDI data format).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

import dexed

from deepafx.hosts.dexed_host import (
    NUM_DEXED_PARAMS,
    dexed_param_table,
    normalized_from_preset_array,
    preset_array_from_normalized,
    quantize_normalized,
)

#: Factory voice files inside the hexter package.
HEXTER_BANKS = ("dx7_roms.dx7", "tx7_roms.dx7")
#: Where an installed hexter keeps them.
HEXTER_SYSTEM_DIR = Path("/usr/share/hexter")

SINGLE_VOICE_HEADER = bytes([0xF0, 0x43, 0x00, 0x00, 0x01, 0x1B])
SINGLE_VOICE_SIZE = 163
BANK_HEADER = bytes([0xF0, 0x43, 0x00, 0x09, 0x20, 0x00])
BANK_SIZE = 4104
INIT_VOICE_NAME = "INIT VOICE"


def _checksum(data: bytes) -> int:
    return (-sum(data)) & 0x7F


@dataclass(frozen=True)
class Voice:
    """One DX7 voice: a 10-character name and its normalized vector ``(145,)`` on [0, 1]."""

    name: str
    x: np.ndarray

    def patch(self) -> "dexed.Patch":
        return patch_from_normalized(self.x, self.name)


def patch_from_normalized(x: np.ndarray, name: str = "DEEPAFX") -> "dexed.Patch":
    """Normalized vector ``(145,)`` → ``dexed.Patch`` (values rounded to the DX7 grid).

    Raises:
        ValueError: wrong shape or NaN/Inf (from :func:`preset_array_from_normalized`).
    """
    arr = preset_array_from_normalized(np.asarray(x, dtype=np.float64))
    patch = dexed.Preset.from_array(arr).to_patch(name=_clean_name(name))
    return patch


def normalized_from_patch(patch: "dexed.Patch") -> np.ndarray:
    """``dexed.Patch`` → normalized vector ``(145,)`` float64 on [0, 1], exactly on the DX7 grid."""
    return quantize_normalized(normalized_from_preset_array(patch.to_preset().to_array()))


def _clean_name(name: str) -> str:
    ascii_name = "".join(c if 32 <= ord(c) < 127 else "?" for c in str(name))
    return ascii_name[:10].ljust(10)


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------


def read_voices(path: str | Path) -> list[Voice]:
    """Read every DX7 voice in a file.

    Accepts single-voice dumps (163 bytes, possibly several back to back),
    32-voice bulk dumps (4104 bytes, possibly several), and raw packed voice data
    whose length is a multiple of 128 bytes (hexter's ``.dx7`` ROM files).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the content is none of the formats above (the message says
            what was found).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"DX7 voice file not found: {p}")
    data = p.read_bytes()
    voices: list[Voice] = []
    if data[:1] == b"\xF0":
        pos = 0
        while pos < len(data):
            if data[pos] != 0xF0:
                raise ValueError(f"{p}: expected a sysex message (0xF0) at byte {pos}, found 0x{data[pos]:02X}")
            end = data.find(b"\xF7", pos)
            if end < 0:
                raise ValueError(f"{p}: sysex message at byte {pos} has no end (0xF7)")
            msg = data[pos : end + 1]
            if len(msg) == SINGLE_VOICE_SIZE and msg[1] == 0x43 and msg[3] == 0x00:
                patch = dexed.Patch.from_sysex(bytes(msg[6:161]) + b"\x3F")
                voices.append(Voice(patch.name, normalized_from_patch(patch)))
            elif len(msg) == BANK_SIZE and msg[1] == 0x43 and msg[3] == 0x09:
                payload = msg[6:4102]
                voices += _read_packed(payload)
            # other sysex messages (device inquiries, parameter changes) are skipped
            pos = end + 1
        if not voices:
            raise ValueError(
                f"{p}: no DX7 single-voice (163-byte) or 32-voice (4104-byte) sysex dump found in {len(data)} bytes"
            )
        return voices
    if len(data) % 128 == 0 and data:
        return _read_packed(data)
    raise ValueError(
        f"{p}: {len(data)} bytes is neither a sysex file (starting with 0xF0) nor raw packed "
        "DX7 voices (a multiple of 128 bytes)"
    )


def _read_packed(payload: bytes) -> list[Voice]:
    out = []
    for i in range(len(payload) // 128):
        patch = dexed.Patch.from_packed(bytes(payload[i * 128 : (i + 1) * 128]))
        out.append(Voice(patch.name, normalized_from_patch(patch)))
    return out


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------


def single_voice_sysex(x: np.ndarray, name: str = "DEEPAFX", channel: int = 0) -> bytes:
    """A 163-byte DX7 single-voice dump of normalized vector ``x`` ``(145,)``.

    Args:
        x: Normalized Dexed vector on [0, 1].
        name: Voice name (ASCII, cut/padded to 10 characters).
        channel: MIDI channel 0–15 the dump is addressed to.

    Raises:
        ValueError: bad ``x`` or ``channel``.
    """
    if not 0 <= int(channel) <= 15:
        raise ValueError(f"MIDI channel must be 0..15, got {channel}")
    vced = patch_from_normalized(x, name).to_sysex()[:155]
    return SINGLE_VOICE_HEADER[:2] + bytes([int(channel)]) + SINGLE_VOICE_HEADER[3:] + vced + bytes([_checksum(vced), 0xF7])


def bank_sysex(voices: Sequence[tuple[str, np.ndarray]]) -> bytes:
    """A 4104-byte 32-voice bank; fewer than 32 voices are padded with INIT VOICEs.

    Args:
        voices: Up to 32 ``(name, normalized vector (145,))`` pairs.

    Raises:
        ValueError: more than 32 voices.
    """
    if len(voices) > 32:
        raise ValueError(f"a DX7 bank holds 32 voices, got {len(voices)}; split them over several banks")
    patches = [patch_from_normalized(x, name) for name, x in voices]
    patches += [dexed.Patch(INIT_VOICE_NAME) for _ in range(32 - len(patches))]
    payload = b"".join(pt.to_packed() for pt in patches)
    return BANK_HEADER + payload + bytes([_checksum(payload), 0xF7])


def write_single_voice(path: str | Path, x: np.ndarray, name: str = "DEEPAFX") -> Path:
    """Write a single-voice ``.syx`` (163 bytes) and return its path."""
    p = Path(path)
    p.write_bytes(single_voice_sysex(x, name))
    return p


def write_bank(path: str | Path, voices: Sequence[tuple[str, np.ndarray]]) -> Path:
    """Write a 32-voice bank ``.syx`` (4104 bytes) and return its path."""
    p = Path(path)
    p.write_bytes(bank_sysex(voices))
    return p


# ---------------------------------------------------------------------------
# factory presets
# ---------------------------------------------------------------------------


def fetch_hexter_banks(dest_dir: str | Path) -> Path:
    """Make the hexter factory banks available in ``dest_dir`` and return that folder.

    Uses an installed hexter (``/usr/share/hexter``) when present; otherwise
    fetches the package's files with :func:`deepafx.data.debian.fetch_package`
    (``apt-get download hexter`` and ``dpkg -x``, cached; the DSSI plugin itself
    is not installed) and copies the ``.dx7`` files.

    Raises:
        RuntimeError: neither route worked; the message lists each attempt and why.
    """
    from deepafx.data.debian import DebianFetchError, fetch_package

    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    if all((dest / b).exists() for b in HEXTER_BANKS):
        return dest
    attempts = []
    if all((HEXTER_SYSTEM_DIR / b).exists() for b in HEXTER_BANKS):
        for b in HEXTER_BANKS:
            shutil.copy(HEXTER_SYSTEM_DIR / b, dest / b)
        return dest
    attempts.append(f"{HEXTER_SYSTEM_DIR}: not installed")
    try:
        src = fetch_package("hexter", use_installed=False) / "usr" / "share" / "hexter"
        for b in HEXTER_BANKS:
            shutil.copy(src / b, dest / b)
        return dest
    except (DebianFetchError, OSError) as exc:
        attempts.append(f"apt-get download hexter: {exc}")
    raise RuntimeError(
        "could not get the DX7 factory banks (hexter): " + "; ".join(attempts)
        + ". Fix: run `apt-get download hexter && dpkg -x hexter_*.deb DIR` on a machine with Debian "
        "package access and set data.hexter_dir to DIR/usr/share/hexter."
    )


def load_factory_presets(bank_dir: str | Path, banks: Sequence[str] = HEXTER_BANKS) -> list[Voice]:
    """Read the factory banks and drop duplicate voices (same quantized parameters).

    Returns:
        Unique voices in file order.

    Raises:
        FileNotFoundError: a bank file is missing (names the folder and file).
    """
    out: list[Voice] = []
    seen: set[bytes] = set()
    for b in banks:
        path = Path(bank_dir) / b
        if not path.exists():
            raise FileNotFoundError(f"factory bank {b} not found in {bank_dir}; run `deepafx data` to fetch hexter")
        for v in read_voices(path):
            key = np.rint(quantize_normalized(v.x) * 1000).astype(np.int32).tobytes()
            if key in seen:
                continue
            seen.add(key)
            out.append(v)
    return out


def sample_around(
    x: np.ndarray,
    rng: np.random.Generator,
    sigma: float = 0.05,
    discrete_change_prob: float = 0.05,
    algorithm_change_prob: float = 0.2,
) -> np.ndarray:
    """A preset sampled around ``x`` ``(145,)``: the DiffSynth-style volume augmentation.

    Continuous parameters get Gaussian noise of standard deviation ``sigma``
    (normalized units); each discrete parameter moves one step up or down with
    probability ``discrete_change_prob``; the algorithm is redrawn uniformly with
    probability ``algorithm_change_prob``. Operator output levels are left within
    ±``sigma`` too, so the sound stays related to its source. Result is on the
    DX7 grid.

    Raises:
        ValueError: bad shape or probabilities outside [0, 1].
    """
    x = np.asarray(x, dtype=np.float64)
    if x.shape != (NUM_DEXED_PARAMS,):
        raise ValueError(f"expected a ({NUM_DEXED_PARAMS},) normalized vector, got {x.shape}")
    for n, p in (("discrete_change_prob", discrete_change_prob), ("algorithm_change_prob", algorithm_change_prob)):
        if not 0 <= p <= 1:
            raise ValueError(f"{n} must be in [0, 1], got {p}")
    table = dexed_param_table()
    y = x.copy()
    for j, p in enumerate(table):
        if p.name == "transpose_semitones":
            continue
        if p.is_discrete:
            if p.name == "algorithm":
                if rng.random() < algorithm_change_prob:
                    y[j] = rng.integers(0, 32) / 31.0
                continue
            if rng.random() < discrete_change_prob:
                k = p.num_values - 1
                y[j] = np.clip(np.rint(y[j] * k) + rng.choice((-1, 1)), 0, k) / k
        else:
            y[j] = x[j] + sigma * rng.standard_normal()
    return quantize_normalized(np.clip(y, 0.0, 1.0))


def set_transpose(x: np.ndarray, semitones: np.ndarray | int) -> np.ndarray:
    """Copy of ``x`` ``(..., 145)`` with the transpose set to ``semitones`` (−24…24)."""
    x = np.array(x, dtype=np.float64, copy=True)
    j = dexed_param_table().index("transpose_semitones")
    x[..., j] = (np.clip(np.asarray(semitones, dtype=np.float64), -24, 24) + 24.0) / 48.0
    return x


__all__ = [
    "HEXTER_BANKS",
    "Voice",
    "bank_sysex",
    "fetch_hexter_banks",
    "load_factory_presets",
    "normalized_from_patch",
    "patch_from_normalized",
    "read_voices",
    "sample_around",
    "set_transpose",
    "single_voice_sysex",
    "write_bank",
    "write_single_voice",
]
