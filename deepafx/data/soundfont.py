"""SoundFont rendering shared by recipes (FluidSynth through pyfluidsynth).

Real audio from real scores: recipes play notes from music21's corpus, or single
notes, through a General MIDI SoundFont (Debian ``fluid-soundfont-gm``:
FluidR3_GM, MIT licence).

* :func:`load_synth` — a FluidSynth instance with a SoundFont loaded (clear
  errors when the SoundFont or the library is missing; reverb and chorus off
  unless asked for, so notes come out dry).
* :func:`write_float` — render the next ``n`` samples as float32 straight into
  two arrays (libfluidsynth's ``fluid_synth_write_float``; pyfluidsynth's own
  ``get_samples`` goes through 16-bit integers).
* :func:`render_notes` — single notes ``(program, pitch, velocity)``, each from
  silence, mono (NSynth-like sets).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

#: Debian's General MIDI SoundFont (package fluid-soundfont-gm).
DEFAULT_SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"

_WRITE_FLOAT = None


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence libfluidsynth's C-level warnings (they go straight to file descriptor 2)."""
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(fd, 2)
            os.close(fd)


def load_synth(soundfont: str | Path, sample_rate: float, gain: float = 0.2, reverb: bool = False,
               chorus: bool = False, quiet: bool = False, **settings: Any) -> tuple[Any, int]:
    """A FluidSynth synthesizer with ``soundfont`` loaded.

    Args:
        soundfont: Path of a General MIDI ``.sf2`` file.
        sample_rate: Output rate in Hz.
        gain: FluidSynth master gain (linear).
        reverb, chorus: Turn FluidSynth's reverb / chorus on (off: dry notes).
        quiet: Silence libfluidsynth's warnings while loading.
        **settings: Further FluidSynth settings (``"synth.polyphony": 256`` …).

    Returns:
        ``(synth, soundfont id)``; call ``synth.delete()`` when done.

    Raises:
        FileNotFoundError: the SoundFont is missing (says which Debian package has it).
        RuntimeError: pyfluidsynth/libfluidsynth is missing, or the file fails to load.
    """
    sf = Path(soundfont)
    if not sf.is_file():
        raise FileNotFoundError(
            f"SoundFont {sf} not found; install Debian's fluid-soundfont-gm "
            "(apt-get install fluid-soundfont-gm) or set data.soundfont to another General MIDI .sf2"
        )
    try:
        # pyfluidsynth prints where it found libfluidsynth on stdout when $CI is set; stdout carries
        # the JSON lines of the benchmarks and commands, so the import speaks to stderr instead.
        with contextlib.redirect_stdout(sys.stderr):
            import fluidsynth
    except (ImportError, OSError) as exc:
        raise RuntimeError(f"pyfluidsynth/libfluidsynth unavailable ({exc}); "
                           "`apt-get install fluidsynth` and `pip install pyfluidsynth`") from exc
    opts = {"synth.reverb.active": 1 if reverb else 0, "synth.chorus.active": 1 if chorus else 0, **settings}
    with quiet_stderr() if quiet else contextlib.nullcontext():
        synth = fluidsynth.Synth(gain=gain, samplerate=float(sample_rate), **opts)
        sfid = synth.sfload(str(sf))
    if sfid < 0:
        synth.delete()
        raise RuntimeError(f"FluidSynth could not load SoundFont {sf}")
    return synth, sfid


def write_float(synth: Any, left: np.ndarray, right: np.ndarray) -> None:
    """Render the next ``len(left)`` samples of ``synth`` into ``left`` and ``right`` (float32, contiguous)."""
    global _WRITE_FLOAT
    if _WRITE_FLOAT is None:
        import fluidsynth

        fn = fluidsynth._fl.fluid_synth_write_float
        fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                       ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        fn.restype = ctypes.c_int
        _WRITE_FLOAT = fn
    _WRITE_FLOAT(synth.synth, len(left), left.ctypes.data, 0, 1, right.ctypes.data, 0, 1)


def render_notes(
    soundfont: str | Path,
    notes: Sequence[tuple[int, int, int]],
    sample_rate: float = 16000.0,
    duration_seconds: float = 4.0,
    note_duration_seconds: float = 3.0,
) -> np.ndarray:
    """Render single notes ``(program, pitch, velocity)`` from a GM SoundFont, dry and mono.

    Each note starts from silence on a fresh channel state (all sounds off and
    one second of flush between notes); reverb and chorus are off.

    Args:
        soundfont: Path of an ``.sf2`` file.
        notes: ``(program 0–127, MIDI pitch, velocity 1–127)`` triples.
        sample_rate: Output rate in Hz.
        duration_seconds: Length of each note's audio, seconds.
        note_duration_seconds: Note-on time, seconds.

    Returns:
        ``(num_notes, samples)`` float32 (stereo downmixed to mono, full scale 1.0).

    Raises:
        FileNotFoundError: the SoundFont is missing (says which Debian package has it).
        RuntimeError: pyfluidsynth/libfluidsynth is not installed or the file fails to load.
    """
    n = int(round(duration_seconds * sample_rate))
    n_on = int(round(note_duration_seconds * sample_rate))
    synth, sfid = load_synth(soundfont, sample_rate, gain=0.5, quiet=True)
    out = np.zeros((len(notes), n), dtype=np.float32)
    try:
        for i, (program, pitch, velocity) in enumerate(notes):
            synth.program_select(0, sfid, 0, int(program))
            synth.noteon(0, int(pitch), int(velocity))
            on = synth.get_samples(n_on)
            synth.noteoff(0, int(pitch))
            off = synth.get_samples(n - n_on)
            st = np.concatenate([on, off]).reshape(-1, 2).astype(np.float32) / 32768.0
            out[i] = st.mean(axis=1)[:n]
            synth.all_sounds_off(0)
            synth.get_samples(int(sample_rate))  # flush
    finally:
        synth.delete()
    return out


__all__ = ["DEFAULT_SOUNDFONT", "load_synth", "quiet_stderr", "render_notes", "write_float"]
