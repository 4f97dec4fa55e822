"""Audio files in and out: the one reader, converter and writer every command uses.

Reading (:func:`read_audio`) goes through soundfile (libsndfile) and refuses,
with a message that states the fix:

* a missing file (:class:`FileNotFoundError`), a folder, or a file libsndfile
  cannot decode;
* a **truncated** file: a WAV (RIFF, RIFX, RF64/BW64, Wave64) or AIFF whose data chunk
  declares more bytes than the file holds (an interrupted download or copy).
  libsndfile quietly reads what is there and reports the shorter length, so the
  chunk sizes are checked against the file size here; for other formats the
  frame count in the header is compared with the frames decoded;
* zero-length audio and NaN/Inf samples.

Digital silence is *not* refused by the reader: :func:`silence_warning` gives a
message that a command reports as a warning (mastering a silent album track
yields silence) or turns into an error where silence makes the task impossible
(aligning a training pair, matching a note).

Conversion (:func:`conform`) brings audio to a model's rate and channel count
and says, in one human-readable note per change, what it did:

* **Rate**: soxr, very high quality (:func:`resample`).
* **Channels**: mono is duplicated; to mono, all channels are averaged; six
  channels to stereo are taken as 5.1 in the WAV/SMPTE order
  ``L, R, C, LFE, Ls, Rs`` and downmixed with the ITU-R BS.775 coefficients
  ``Lo = L + 0.7071 C + 0.7071 Ls``, ``Ro = R + 0.7071 C + 0.7071 Rs`` (LFE
  dropped, no normalization: the result may exceed full scale, which float
  processing keeps); any other count above two is averaged to mono and
  duplicated. See ITU-R BS.775-3, "Multichannel stereophonic sound system with
  and without accompanying picture", Table 2 (2012).

Writing (:func:`write_files_atomic`) is all-or-nothing over several outputs:
every file goes to a temporary file in its destination folder, is flushed and
fsynced, and only when all are complete are they renamed over their final names.
New files get the permissions the user's umask gives (like ``open(path, "w")``);
a replaced file keeps its mode.
"""

from __future__ import annotations

import io
import logging
import os
import secrets
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf
import soxr

from deepafx.hosts.base import AudioError

log = logging.getLogger(__name__)

__all__ = [
    "AudioFile",
    "BS775_STEREO",
    "SILENCE_DBFS",
    "check_audio",
    "conform",
    "downmix",
    "encode_audio",
    "output_format",
    "peak_dbfs",
    "read_audio",
    "resample",
    "silence_warning",
    "write_files_atomic",
]

#: Audio whose sample peak is at or below this level (dBFS) counts as silent.
SILENCE_DBFS = -90.0
#: ITU-R BS.775 5.1 → stereo downmix, ``(2, 6)``: rows Lo, Ro; columns L, R, C, LFE, Ls, Rs.
BS775_STEREO = np.array(
    [[1.0, 0.0, np.sqrt(0.5), 0.0, np.sqrt(0.5), 0.0],
     [0.0, 1.0, np.sqrt(0.5), 0.0, 0.0, np.sqrt(0.5)]],
    dtype=np.float32,
)
#: WAVE_FORMAT_EXTENSIBLE channel masks meaning 5.1 in the order L, R, C, LFE, Ls, Rs
#: (back surrounds 0x3F, side surrounds 0x60F).
_MASKS_5_1 = (0x3F, 0x60F)
#: Subtypes kept from the input when the output format supports them.
_KEEP_SUBTYPES = ("PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE")
#: Data chunk sizes streaming writers leave when the length is unknown.
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)
#: Bytes per sample of the uncompressed subtypes (for stating a truncated file's declared length).
_SAMPLE_BYTES = {"PCM_S8": 1, "PCM_U8": 1, "ULAW": 1, "ALAW": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4,
                 "FLOAT": 4, "DOUBLE": 8}


# --------------------------------------------------------------------------- reading
@dataclass
class AudioFile:
    """Audio read from disk.

    Attributes:
        audio: ``(channels, samples)`` float32, full scale 1.0.
        sample_rate: Hz.
        format: soundfile container format (``"WAV"``, ``"FLAC"`` …).
        subtype: soundfile sample format (``"PCM_16"``, ``"FLOAT"`` …).
        path: Where it came from.
        channel_mask: Speaker mask of a WAVE_FORMAT_EXTENSIBLE file, else None.
        warnings: Doubts about the file that did not stop reading (e.g. an MP3
            whose decoded length differs from its header's).
    """

    audio: np.ndarray
    sample_rate: int
    format: str
    subtype: str
    path: Path
    channel_mask: int | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def channels(self) -> int:
        """Number of channels."""
        return int(self.audio.shape[0])

    @property
    def samples(self) -> int:
        """Samples per channel."""
        return int(self.audio.shape[1])

    @property
    def seconds(self) -> float:
        """Duration in seconds."""
        return self.audio.shape[1] / self.sample_rate


def read_audio(path: str | Path) -> AudioFile:
    """Read an audio file with soundfile and check it is complete and finite.

    Args:
        path: Any format libsndfile reads (WAV, FLAC, AIFF, OGG, MP3 …).

    Returns:
        :class:`AudioFile` with ``audio`` ``(channels, samples)`` float32.
        Silence is not refused here (see :func:`silence_warning`).

    Raises:
        FileNotFoundError: no such file.
        PermissionError: the file cannot be opened.
        AudioError: (a ValueError) a folder, not decodable as audio, truncated
            (the header declares more audio than the file holds), zero-length,
            or NaN/Inf samples. The message names the file and the fix.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"input audio not found: {p}")
    if p.is_dir():
        raise AudioError(f"{p} is a folder; give an audio file")
    with open(p, "rb"):  # a PermissionError here is clearer than libsndfile's "System error"
        pass
    try:
        info = sf.info(str(p))
    except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError/TypeError by version
        raise _unreadable(p, exc) from exc
    layout = _scan_iff(p)
    _check_chunks(p, info, layout)  # before decoding: a truncated file is refused at once
    try:
        data, rate = sf.read(str(p), dtype="float32", always_2d=True)
    except Exception as exc:
        raise _unreadable(p, exc) from exc
    audio = np.ascontiguousarray(data.T)
    warnings: list[str] = []
    if layout is None or layout.declared_bytes is None:
        _check_decoded(p, info, audio.shape[1], warnings)
    check_audio(audio, int(rate), what=str(p))
    mask = layout.channel_mask if layout is not None else None
    return AudioFile(audio, int(rate), info.format, info.subtype, p, mask, warnings)


def _unreadable(path: Path, exc: Exception) -> AudioError:
    return AudioError(
        f"cannot read {path} as audio ({' '.join(str(exc).split())}); the file is damaged, truncated or not audio: "
        f"use a format libsndfile reads ({', '.join(sorted(sf.available_formats()))})"
    )


@dataclass
class _IffLayout:
    """Where the audio data of a RIFF/RIFX/RF64/W64/AIFF file lies."""

    kind: str  # "WAV", "W64" or "AIFF"
    data_offset: int | None = None  # byte offset of the data/SSND chunk body
    declared_bytes: int | None = None  # its declared size (None: unknown, streamed)
    file_bytes: int = 0
    channel_mask: int | None = None


def _scan_iff(path: Path) -> _IffLayout | None:
    """Walk the chunk headers of a WAV or AIFF file; None for other formats.

    Reads only the 8-byte chunk headers (and the ``fmt ``/``ds64`` bodies), so
    the cost does not depend on the file's length.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(40)
        if len(head) >= 40 and head[:4] == b"riff" and head[24:28] == b"wave":
            return _scan_w64(f, size)
        if len(head) < 12:
            return None
        riff, form = head[:4], head[8:12]
        if riff in (b"RIFF", b"RF64", b"BW64") and form == b"WAVE":
            endian, kind = "<", "WAV"
        elif riff == b"RIFX" and form == b"WAVE":
            endian, kind = ">", "WAV"
        elif riff == b"FORM" and form in (b"AIFF", b"AIFC"):
            endian, kind = ">", "AIFF"
        else:
            return None
        layout = _IffLayout(kind, file_bytes=size)
        ds64_data = None
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            cid, csize = struct.unpack(endian + "4sI", f.read(8))
            body = pos + 8
            if cid == b"ds64" and csize >= 16:
                _, ds64_data = struct.unpack("<QQ", f.read(16))
            elif cid == b"fmt " and csize >= 24:
                fmt = f.read(min(csize, 40))
                tag = struct.unpack(endian + "H", fmt[:2])[0]
                if tag == 0xFFFE and len(fmt) >= 24:
                    layout.channel_mask = struct.unpack(endian + "I", fmt[20:24])[0]
            elif cid in (b"data", b"SSND"):
                layout.data_offset = body
                if cid == b"data" and csize == 0xFFFFFFFF and ds64_data is not None:
                    layout.declared_bytes = int(ds64_data)
                elif not (cid == b"data" and csize in _UNKNOWN_SIZES):
                    layout.declared_bytes = int(csize)
                return layout
            pos = body + csize + (csize & 1)
        return layout


def _scan_w64(f, size: int) -> _IffLayout:
    """Sony Wave64: 16-byte GUID chunk ids, 64-bit sizes counting the 24-byte header, 8-byte alignment."""
    layout = _IffLayout("W64", file_bytes=size)
    pos = 40
    while pos + 24 <= size:
        f.seek(pos)
        guid, csize = struct.unpack("<16sQ", f.read(24))
        if guid[:4] == b"data":
            layout.data_offset = pos + 24
            if csize >= 24:
                layout.declared_bytes = int(csize) - 24
            return layout
        if csize < 24:
            return layout
        pos += (csize + 7) // 8 * 8
    return layout


def _check_chunks(path: Path, info, layout: _IffLayout | None) -> None:
    """Raise :class:`AudioError` when a WAV/W64/AIFF data chunk declares more bytes than the file holds.

    libsndfile then reports (``info.frames``) and decodes only the frames present.
    """
    if layout is None or layout.data_offset is None or layout.declared_bytes is None:
        return
    present = max(layout.file_bytes - layout.data_offset, 0)
    if layout.declared_bytes <= present:
        return
    rate = float(info.samplerate)
    frame_bytes = _SAMPLE_BYTES.get(str(info.subtype), 0) * int(info.channels)
    header = 8 if layout.kind == "AIFF" else 0  # SSND offset and block size
    if frame_bytes:
        declared_s = max(layout.declared_bytes - header, 0) // frame_bytes / rate
    else:  # compressed data: scale the frames present
        declared_s = info.frames / rate * layout.declared_bytes / max(present, 1)
    raise AudioError(
        f"{path} is truncated: its {layout.kind} header declares {layout.declared_bytes} bytes of audio "
        f"({declared_s:.2f} s) but the file holds only {present} ({info.frames / rate:.2f} s); "
        "the file is incomplete (an interrupted download or copy?): get the complete file again"
    )


def _check_decoded(path: Path, info, frames_read: int, warnings: list[str]) -> None:
    """Other formats: compare the header's frame count with the frames decoded."""
    rate = float(info.samplerate)
    if str(info.format).upper() == "OGG" and "lacks an end-of-stream bit" in str(info.extra_info):
        warnings.append(f"{path}: the last Ogg page lacks its end-of-stream flag; the file may be truncated")
    declared = int(info.frames)
    if frames_read < declared:
        msg = (f"{path}: the header declares {declared} frames ({declared / rate:.2f} s) but only {frames_read} "
               f"({frames_read / rate:.2f} s) could be decoded")
        if str(info.format).upper() == "MP3" and frames_read > 0:
            # libsndfile estimates the length of an MP3 without a Xing/LAME header
            warnings.append(msg + "; the file may be truncated")
            return
        raise AudioError(msg + "; the file is truncated or damaged: get the complete file again")


def check_audio(audio: np.ndarray, sample_rate: float, what: str = "audio") -> None:
    """Refuse audio that holds nothing, or non-finite samples.

    Args:
        audio: ``(channels, samples)``.
        sample_rate: Hz (used to report positions in seconds).
        what: Name used in messages (a file path).

    Raises:
        AudioError: (a ValueError) zero channels or samples, or NaN/Inf (the
            count and the first position, in seconds, are given).
    """
    if audio.ndim != 2 or audio.shape[0] == 0 or audio.shape[1] == 0:
        raise AudioError(f"{what} holds no audio (shape {audio.shape}); give a file with at least one sample")
    finite = np.isfinite(audio)
    if not finite.all():
        bad = ~finite
        t = int(np.argmax(bad.any(axis=0)))  # the earliest, in time
        ch = int(np.argmax(bad[:, t]))
        raise AudioError(
            f"{what} contains NaN/Inf samples ({int(bad.sum())}, the first in channel {ch} at {t / sample_rate:.4f} s, "
            f"sample {t}); repair or re-export the file"
        )


def peak_dbfs(audio: np.ndarray) -> float:
    """Sample peak of ``audio`` (any shape) in dBFS; ``-inf`` for digital silence."""
    peak = float(np.max(np.abs(audio))) if np.size(audio) else 0.0
    return -np.inf if peak == 0.0 else 20.0 * float(np.log10(peak))


def silence_warning(audio: np.ndarray, what: str = "audio", silence_dbfs: float = SILENCE_DBFS) -> str | None:
    """A message when ``audio`` is silent, else None.

    Args:
        audio: ``(channels, samples)`` finite samples.
        what: Name used in the message (a file path).
        silence_dbfs: Sample-peak level (dBFS) at or below which audio is silent.

    Returns:
        ``"<what> is silent (digital silence, at or below -90 dBFS)"`` (or the
        measured peak instead of "digital silence"), or None when it is not.
    """
    level = peak_dbfs(audio)
    if level > silence_dbfs:
        return None
    described = "digital silence" if level == -np.inf else f"sample peak {level:.1f} dBFS"
    return f"{what} is silent ({described}, at or below {silence_dbfs:g} dBFS)"


# --------------------------------------------------------------------------- conversion
def resample(audio: np.ndarray, sample_rate: float, target_rate: float) -> np.ndarray:
    """Resample with soxr (very high quality).

    Args:
        audio: ``(channels, samples)``.
        sample_rate: Rate of ``audio`` in Hz.
        target_rate: Rate wanted in Hz.

    Returns:
        ``(channels, about samples * target_rate / sample_rate)`` float32
        (soxr may give a sample more or fewer than the rounded ratio); the
        input itself, as float32, when the rates are equal.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if float(sample_rate) == float(target_rate):
        return np.ascontiguousarray(audio)
    out = soxr.resample(np.ascontiguousarray(audio.T), float(sample_rate), float(target_rate), quality="VHQ")
    return np.ascontiguousarray(np.asarray(out, dtype=np.float32).reshape(-1, audio.shape[0]).T)


def downmix(audio: np.ndarray, target_channels: int, channel_mask: int | None = None) -> tuple[np.ndarray, str | None]:
    """Change the channel count (the rules are in the module docstring).

    Args:
        audio: ``(channels, samples)``.
        target_channels: 1 or 2 (or equal to the input's count).
        channel_mask: WAVE_FORMAT_EXTENSIBLE speaker mask of the input, if
            known; six channels whose mask is set and is not 5.1 are averaged
            instead of downmixed by BS.775.

    Returns:
        ``(audio (target_channels, samples) float32, note)``; ``note`` is None
        when nothing changed.

    Raises:
        AudioError: a conversion not defined here (upmixing two or more
            channels, or a target other than 1 or 2 channels).
    """
    audio = np.asarray(audio, dtype=np.float32)
    c, t = audio.shape[0], int(target_channels)
    if c == t:
        return audio, None
    if c == 1:
        return np.repeat(audio, t, axis=0), f"mono input duplicated to {t} channels"
    if t == 1:
        return audio.mean(axis=0, keepdims=True), f"{c} channels averaged to mono"
    if t != 2 or c < 2:
        raise AudioError(f"cannot convert {c} channels to {t}; give a file with {t} channel(s)")
    if c == 6 and (channel_mask in (None, 0) or channel_mask in _MASKS_5_1):
        out = np.einsum("oc,cn->on", BS775_STEREO, audio).astype(np.float32)
        note = ("6 channels downmixed to stereo as 5.1 (L R C LFE Ls Rs) with ITU-R BS.775 coefficients: "
                "L + 0.707 C + 0.707 Ls, R + 0.707 C + 0.707 Rs, LFE dropped")
        level = peak_dbfs(out)
        if level > 0:
            note += f" (the downmix peaks at {level:+.1f} dBFS)"
        return out, note
    why = f"speaker mask 0x{channel_mask:X} is not 5.1" if c == 6 else "no standard stereo downmix for this count"
    return (np.repeat(audio.mean(axis=0, keepdims=True), 2, axis=0),
            f"{c} channels averaged to mono and duplicated to stereo ({why})")


def conform(audio: np.ndarray, sample_rate: float, target_rate: float, target_channels: int,
            channel_mask: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Bring audio to a model's rate and channel count, saying what changed.

    Args:
        audio: ``(channels, samples)``, any channel count.
        sample_rate: Rate of ``audio`` in Hz.
        target_rate: Rate wanted in Hz (soxr, very high quality).
        target_channels: Channel count wanted: 1 or 2 (see :func:`downmix`).
        channel_mask: Speaker mask of the input (:attr:`AudioFile.channel_mask`).

    Returns:
        ``(audio (target_channels, samples_at_target_rate) float32, notes)``:
        one human-readable note per change, empty when nothing changed.

    Raises:
        AudioError: an unsupported channel conversion (see :func:`downmix`).
    """
    notes = []
    audio, note = downmix(audio, target_channels, channel_mask)
    if note:
        notes.append(note)
    if float(sample_rate) != float(target_rate):
        audio = resample(audio, sample_rate, target_rate)
        notes.append(f"resampled from {sample_rate:g} Hz to {target_rate:g} Hz (soxr, very high quality)")
    return np.ascontiguousarray(audio, dtype=np.float32), notes


# --------------------------------------------------------------------------- writing
def output_format(path: str | Path, input_subtype: str | None = None) -> tuple[str, str, str | None]:
    """Container and sample format for writing ``path``.

    Args:
        path: Output file; the format comes from its extension.
        input_subtype: Subtype of the input (kept when the format takes it).

    Returns:
        ``(format, subtype, note)``: the input's subtype when it is PCM 16/24/32
        or float and the format takes it, else float or PCM 24, else the
        format's default; ``note`` says when the subtype was changed.

    Raises:
        ValueError: an extension that names no format libsndfile writes.
    """
    out_path = Path(path)
    ext = out_path.suffix.lower().lstrip(".")
    formats = {k.lower(): k for k in sf.available_formats()}
    aliases = {"aif": "aiff", "oga": "ogg", "wave": "wav"}
    fmt = formats.get(aliases.get(ext, ext))
    if fmt is None:
        raise ValueError(
            f"cannot tell the audio format of {out_path} from its extension; use one of "
            f"{', '.join('.' + k for k in sorted(formats))}"
        )
    if input_subtype in _KEEP_SUBTYPES and sf.check_format(fmt, input_subtype):
        return fmt, input_subtype, None
    for st in ("FLOAT", "PCM_24"):
        if sf.check_format(fmt, st):
            return fmt, st, f"output written as {st} ({input_subtype or 'unknown'} input subtype does not suit {fmt})"
    st = sf.default_subtype(fmt)
    return fmt, st, f"output written as {st}, the default of {fmt}"


def encode_audio(audio: np.ndarray, sample_rate: float, fmt: str, subtype: str) -> tuple[bytes, int]:
    """Encode audio to the bytes of a file.

    Args:
        audio: ``(channels, samples)``, full scale 1.0.
        sample_rate: Hz (rounded to an integer).
        fmt: soundfile format (``"WAV"`` …), see :func:`output_format`.
        subtype: soundfile subtype; for all but ``FLOAT``/``DOUBLE`` samples are
            clipped to [-1, 1].

    Returns:
        ``(file_bytes, clipped_samples)``.
    """
    data = np.asarray(audio, dtype=np.float32)
    clipped = 0
    if subtype not in ("FLOAT", "DOUBLE"):
        clipped = int(np.count_nonzero(np.abs(data) > 1.0))
        data = np.clip(data, -1.0, 1.0)
    buf = io.BytesIO()
    sf.write(buf, data.T, int(round(sample_rate)), subtype=subtype, format=fmt)
    return buf.getvalue(), clipped


def _create_temp(path: Path) -> tuple[int, Path]:
    """Open a new temporary file beside ``path``, mode 0o666 less the umask (as ``open(..., "w")``)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary file beside {path}: 100 names taken")


def write_files_atomic(outputs: Sequence[tuple[str | Path, bytes]]) -> None:
    """Write several files all-or-nothing.

    Each ``(path, bytes)`` goes to a temporary file ``.<name>.<random>.tmp`` in
    the destination folder (created if needed), flushed and fsynced; only when
    every one is complete are they renamed over their final names (and the
    folders fsynced). On any error the temporary files are removed and no
    destination has changed. A new file gets mode ``0o666`` less the umask,
    like ``open(path, "w")``; a replaced file keeps its mode. (The renames are
    atomic one by one; an error between two renames, e.g. a full disk cannot
    cause one, would leave the earlier ones done.)

    Args:
        outputs: ``(path, content)`` pairs; paths must differ.

    Raises:
        OSError: a folder cannot be created or written (nothing changed).
    """
    temps: list[tuple[Path, Path]] = []
    try:
        for path, data in outputs:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = _create_temp(path)
            temps.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                if path.exists():
                    os.fchmod(f.fileno(), stat.S_IMODE(path.stat().st_mode))
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for tmp, path in temps:
            os.replace(tmp, path)
        for folder in {path.parent for _, path in temps}:
            _fsync_dir(folder)
    finally:
        for tmp, _ in temps:
            if os.path.lexists(tmp):
                os.unlink(tmp)


def _fsync_dir(folder: Path) -> None:
    """Make renames in ``folder`` durable (not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
