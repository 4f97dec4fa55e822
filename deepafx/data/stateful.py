"""Stateful batching: every batch slot plays one track, frame after frame.

Real plugins carry state from one block to the next (compressor envelopes,
filter memories, reverb tails). DeepAFx therefore does not train on i.i.d.
frames: batch slot ``i`` is fed *consecutive, non-overlapping* frames of the
same track, and slot ``i`` owns its own plugin instances (one for the forward
render and one each for the SPSA ``+`` and ``-`` renders), so each instance
sees a continuous signal. See `Ramírez, Wang, Smaragdis and Bryan,
"Differentiable Signal Processing With Black-Box Audio Effects", ICASSP 2021
<https://arxiv.org/abs/2105.04752>`_, Sec. 2.3.

Frame and context
-----------------
The Fx chain renders only ``frame_samples`` samples per step (the hop), while
the encoder looks at ``context_samples`` samples *centred on the frame*
(DeepAFx: 1,024-sample frames inside a 40,960-sample context). For a frame
starting at sample ``p`` of a track the context covers::

    [p - (context_samples - frame_samples) // 2,
     p - (context_samples - frame_samples) // 2 + context_samples)

and is zero-padded where it reaches past either end of the track. The context
therefore looks into the future of the frame; that is the original design
(offline processing), not a leak of the target.

Slots, resets and epochs
------------------------
Tracks are consumed from a *stream* that concatenates one permutation of all
track indices per epoch (``permutation(seed, epoch)``; identity order when
``shuffle=False``). When a slot finishes its track it takes the next track of
the stream and reports ``reset[i] = True`` on that batch: the trainer must
reset slot ``i``'s plugin instances *before* rendering that frame. The very
first batch resets every slot.

Epoch ``e`` ends on the batch that emits the last frame of the last track drawn
from permutation ``e``, i.e. once every track has been consumed once. What
slots that finish early do meanwhile is the ``epoch_mode``:

* ``"wrap"`` (default, for training): an idle slot immediately takes the next
  track of the stream, which belongs to the next epoch's permutation. Every
  batch is full (no render is wasted on padding) and over many epochs every
  frame is seen equally often; the price is that the epoch boundary is not a
  hard wall: when epoch ``e`` ends, some slots are already part-way through
  tracks of epoch ``e + 1``. With fewer tracks than slots, one batch may hold
  tracks of several epochs, and the same track may play in two slots at once
  (in different plugin instances, so state is never shared).
* ``"drain"`` (for validation and evaluation): slots that run out stay idle
  (``active[i] = False``, all-zero audio, ``track_ids[i] = -1``) until every
  track of the epoch has been consumed; the next epoch then starts with all
  slots reset. Every frame is emitted exactly once per epoch and every track
  starts from reset plugin state, so results do not depend on batch history.

Frames per track are ``samples // frame_samples`` (the last partial frame is
dropped) unless ``pad_last_frame=True``, in which case it is emitted with
zeros after the end of the track (and ``valid_samples`` says how many samples
of the frame are real). With ``random_offset=True`` each time a track is drawn
it starts at a seeded offset in ``[0, frame_samples)``, so frame boundaries
differ between epochs (plugin state still starts from reset at that offset).

Determinism and resumption
--------------------------
Everything is a pure function of ``seed`` and the batcher's position in the
stream: permutations and offsets are drawn from
``numpy.random.default_rng([seed, tag, epoch, ...])`` on demand, never from a
running generator. :meth:`StatefulBatcher.state_dict` is therefore a small,
JSON-serialisable dictionary, and a new batcher built on the same tracks that
loads it yields exactly the batches the original would have yielded next.

The module imports neither torch nor any other deep-learning library; batches
are float32 numpy arrays, and :meth:`StatefulBatch.to_torch` converts them on
demand.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Sequence

import numpy as np

__all__ = ["StatefulBatch", "StatefulBatcher"]

_STATE_VERSION = 1
_TAG_PERMUTATION = 1
_TAG_OFFSET = 2


@dataclass
class StatefulBatch:
    """One batch of consecutive frames, one track per slot.

    Attributes:
        context: ``(batch, channels, context_samples)`` float32 input audio around
            each frame (encoder input), zero-padded past the track edges.
        frame: ``(batch, channels, frame_samples)`` float32 input audio the Fx
            chain renders in this step.
        target: ``(batch, channels, frame_samples)`` float32 target audio aligned
            with ``frame``.
        reset: ``(batch,)`` bool; True where the slot starts a new track with this
            frame: reset that slot's plugin instances before rendering.
        active: ``(batch,)`` bool; False only for idle slots in ``"drain"`` mode
            (their audio is all zeros; exclude them from the loss).
        track_ids: ``(batch,)`` int64 index into the batcher's track list
            (``-1`` for idle slots).
        positions: ``(batch,)`` int64 start sample of the frame within its track
            (``-1`` for idle slots).
        valid_samples: ``(batch,)`` int64 number of real (non-padded) samples in
            ``frame``/``target``: ``frame_samples`` except for a padded last frame
            or an idle slot (0).
        epoch: Index of the epoch this batch belongs to (the lowest epoch that
            still has unconsumed frames when the batch is drawn).
        end_of_epoch: True on the batch that consumes the last frame of ``epoch``.
        epochs_completed: Number of epochs fully consumed after this batch (with
            fewer tracks than slots, one batch can complete several epochs).
        step: Index of this batch since the batcher was created (0-based).
    """

    context: np.ndarray
    frame: np.ndarray
    target: np.ndarray
    reset: np.ndarray
    active: np.ndarray
    track_ids: np.ndarray
    positions: np.ndarray
    valid_samples: np.ndarray
    epoch: int
    end_of_epoch: bool
    epochs_completed: int
    step: int

    @property
    def batch_size(self) -> int:
        """Number of slots ``B``."""
        return int(self.frame.shape[0])

    def to_torch(self, device: Any = None) -> dict[str, Any]:
        """Return the arrays as torch tensors (imports torch lazily).

        Args:
            device: Torch device for the tensors (default: CPU).

        Returns:
            Dict with ``context``, ``frame``, ``target`` (float32 tensors, shapes
            as in the attributes), ``reset``, ``active`` (bool), ``track_ids``,
            ``positions``, ``valid_samples`` (int64).
        """
        import torch

        out = {}
        for name in ("context", "frame", "target", "reset", "active", "track_ids", "positions", "valid_samples"):
            out[name] = torch.from_numpy(np.ascontiguousarray(getattr(self, name))).to(device)
        return out


@dataclass
class _Slot:
    track: int = -1  # index into tracks; -1 = idle
    epoch: int = -1  # epoch whose permutation the track was drawn from
    stream_index: int = -1  # global index of the draw in the stream
    offset: int = 0  # start sample of frame 0 in the track
    frame_index: int = 0  # next frame to emit (0 = a fresh track)
    num_frames: int = 0  # frames this track yields from ``offset``


class StatefulBatcher:
    """Feeds batch slots consecutive frames of whole tracks (DeepAFx stateful training).

    See the module docstring for the exact semantics of frames, context, resets
    and epochs.

    Args:
        tracks: List of ``(input, target)`` pairs, each ``(channels, samples)``
            float audio (converted to float32; memory-mapped float32 arrays are
            used without copying). Input and target of a pair must have the same
            shape, and all tracks the same channel count.
        batch_size: Number of slots ``B`` (>= 1).
        frame_samples: Samples rendered per step (hop = output length), >= 1.
        context_samples: Encoder context in samples, centred on the frame,
            >= ``frame_samples``. Make ``context_samples - frame_samples`` even to
            centre exactly (otherwise the extra sample goes after the frame).
        seed: Seed of the track permutations and offsets (>= 0).
        shuffle: Shuffle the track order every epoch (False: tracks in list order).
        epoch_mode: ``"wrap"`` (idle slots take next epoch's tracks; full batches)
            or ``"drain"`` (idle slots wait; every epoch starts fresh).
        pad_last_frame: Emit a last, zero-padded partial frame per track instead
            of dropping it.
        random_offset: Start each drawn track at a seeded offset in
            ``[0, frame_samples)`` so frame boundaries vary between epochs.

    Raises:
        ValueError: bad sizes, empty track list, mismatched shapes or channel
            counts, non-finite audio, or a track too short for one frame
            (the message names the track index and its length).
    """

    def __init__(
        self,
        tracks: Sequence[tuple[np.ndarray, np.ndarray]],
        batch_size: int,
        frame_samples: int,
        context_samples: int,
        seed: int = 0,
        *,
        shuffle: bool = True,
        epoch_mode: Literal["wrap", "drain"] = "wrap",
        pad_last_frame: bool = False,
        random_offset: bool = False,
    ) -> None:
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if int(frame_samples) < 1:
            raise ValueError(f"frame_samples must be >= 1, got {frame_samples}")
        if int(context_samples) < int(frame_samples):
            raise ValueError(
                f"context_samples ({context_samples}) must be >= frame_samples ({frame_samples}); "
                "the context window contains the frame"
            )
        if int(seed) < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")
        if epoch_mode not in ("wrap", "drain"):
            raise ValueError(f"epoch_mode must be 'wrap' or 'drain', got {epoch_mode!r}")
        if len(tracks) == 0:
            raise ValueError("tracks is empty: pass at least one (input, target) pair")
        self.batch_size = int(batch_size)
        self.frame_samples = int(frame_samples)
        self.context_samples = int(context_samples)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.epoch_mode = epoch_mode
        self.pad_last_frame = bool(pad_last_frame)
        self.random_offset = bool(random_offset)
        self._context_before = (self.context_samples - self.frame_samples) // 2

        self.tracks: list[tuple[np.ndarray, np.ndarray]] = []
        channels = None
        for i, pair in enumerate(tracks):
            if len(pair) != 2:
                raise ValueError(f"track {i}: expected an (input, target) pair, got {len(pair)} items")
            x = _as_float32_2d(pair[0], f"track {i} input")
            y = _as_float32_2d(pair[1], f"track {i} target")
            if x.shape != y.shape:
                raise ValueError(
                    f"track {i}: input shape {x.shape} != target shape {y.shape}; "
                    "align and trim pairs first (deepafx.recipes.mastering.pairs.load_pairs does)"
                )
            if channels is None:
                channels = x.shape[0]
            elif x.shape[0] != channels:
                raise ValueError(
                    f"track {i} has {x.shape[0]} channel(s) but track 0 has {channels}; "
                    "all tracks of a batcher need the same channel count"
                )
            if self._frames_in(x.shape[1], 0) < 1:
                raise ValueError(
                    f"track {i} has {x.shape[1]} samples, fewer than one frame ({self.frame_samples}); "
                    "drop it or use pad_last_frame=True"
                )
            self.tracks.append((x, y))
        self.num_channels = int(channels)
        self.track_lengths = np.array([x.shape[1] for x, _ in self.tracks], dtype=np.int64)

        self._slots = [_Slot() for _ in range(self.batch_size)]
        self._stream_cursor = 0  # next stream index to draw
        self._current_epoch = 0  # lowest epoch with unconsumed tracks
        self._remaining: dict[int, int] = {}  # epoch -> tracks of that epoch not yet finished
        self._step = 0
        self._perm_cache: dict[int, np.ndarray] = {}

    # ------------------------------------------------------------------ sizes
    @property
    def num_tracks(self) -> int:
        """Number of tracks."""
        return len(self.tracks)

    def _frames_in(self, length: int, offset: int) -> int:
        usable = max(0, int(length) - int(offset))
        if self.pad_last_frame:
            return math.ceil(usable / self.frame_samples)
        return usable // self.frame_samples

    @property
    def frames_per_track(self) -> np.ndarray:
        """``(num_tracks,)`` int64 frames per track at offset 0."""
        return np.array([self._frames_in(n, 0) for n in self.track_lengths], dtype=np.int64)

    @property
    def total_frames(self) -> int:
        """Frames in one epoch at offset 0 (sum over tracks)."""
        return int(self.frames_per_track.sum())

    @property
    def num_batches_per_epoch(self) -> int:
        """Estimated batches per epoch.

        ``"wrap"`` mode: ``ceil(total_frames / batch_size)``, exact on average over
        epochs (batches are always full); a given epoch can end a few batches
        later, see :meth:`batches_until_epoch_end`. ``"drain"`` mode: exact total
        length of the current epoch (its permutation and offsets), simulated on
        frame counts from the epoch's start (no audio is touched).
        """
        if self.epoch_mode == "wrap":
            return math.ceil(self.total_frames / self.batch_size)
        return self._simulate_drain_epoch(self._current_epoch)

    def batches_until_epoch_end(self) -> int:
        """Exact number of batches, from the current state, until the current epoch ends.

        The count includes the batch flagged ``end_of_epoch``. Computed by
        simulating slot assignment on frame counts only (no audio copied).
        """
        sim = self._clone_counters()
        target_epoch = sim._current_epoch
        n = 0
        while True:
            _, ended = sim._step_counters()
            n += 1
            if target_epoch in ended:
                return n

    # --------------------------------------------------------------- drawing
    def _permutation(self, epoch: int) -> np.ndarray:
        perm = self._perm_cache.get(epoch)
        if perm is None:
            if self.shuffle:
                rng = np.random.default_rng([self.seed, _TAG_PERMUTATION, epoch])
                perm = rng.permutation(self.num_tracks)
            else:
                perm = np.arange(self.num_tracks)
            if len(self._perm_cache) > 8:
                self._perm_cache.clear()
            self._perm_cache[epoch] = perm
        return perm

    def _offset_for(self, stream_index: int) -> int:
        if not self.random_offset or self.frame_samples == 1:
            return 0
        rng = np.random.default_rng([self.seed, _TAG_OFFSET, stream_index])
        return int(rng.integers(0, self.frame_samples))

    def _draw(self, slot: _Slot) -> None:
        """Assign the next track of the stream to ``slot``."""
        idx = self._stream_cursor
        epoch, k = divmod(idx, self.num_tracks)
        track = int(self._permutation(epoch)[k])
        offset = self._offset_for(idx)
        frames = self._frames_in(self.track_lengths[track], offset)
        if frames < 1:  # an offset pushed a one-frame track below one frame
            offset, frames = 0, self._frames_in(self.track_lengths[track], 0)
        slot.track, slot.epoch, slot.stream_index = track, epoch, idx
        slot.offset, slot.frame_index, slot.num_frames = offset, 0, frames
        self._remaining[epoch] = self._remaining.get(epoch, 0) + 1
        self._stream_cursor += 1

    def _may_draw(self) -> bool:
        """Whether an idle slot may take the next stream track now."""
        if self.epoch_mode == "wrap":
            return True
        return self._stream_cursor // self.num_tracks == self._current_epoch

    def _step_counters(self) -> tuple[list[tuple[int, int, int, int]], list[int]]:
        """Advance the bookkeeping by one batch (no audio is touched).

        Returns:
            ``(emits, ended)``: ``emits`` lists ``(slot, track, frame_index,
            offset)`` for every active slot; ``ended`` lists the epochs whose
            last frame is emitted in this batch.
        """
        # 1. Fill: release finished slots, draw new tracks where allowed.
        for slot in self._slots:
            if slot.track >= 0 and slot.frame_index >= slot.num_frames:
                slot.track = -1
            if slot.track < 0 and self._may_draw():
                self._draw(slot)
        # 2. Emit one frame per active slot.
        emits = []
        for i, slot in enumerate(self._slots):
            if slot.track < 0:
                continue
            emits.append((i, slot.track, slot.frame_index, slot.offset))
            slot.frame_index += 1
            if slot.frame_index >= slot.num_frames:
                self._remaining[slot.epoch] -= 1
        # 3. Epoch e ends once all its tracks are drawn and finished.
        ended = []
        while (
            self._stream_cursor >= (self._current_epoch + 1) * self.num_tracks
            and self._remaining.get(self._current_epoch, 0) == 0
        ):
            ended.append(self._current_epoch)
            self._remaining.pop(self._current_epoch, None)
            self._current_epoch += 1
        self._step += 1
        return emits, ended

    # ---------------------------------------------------------------- batches
    def next_batch(self) -> StatefulBatch:
        """Return the next batch of the stream (never raises StopIteration).

        Returns:
            :class:`StatefulBatch` with ``B = batch_size`` slots.
        """
        batch_epoch, step = self._current_epoch, self._step
        emits, ended = self._step_counters()
        B, C = self.batch_size, self.num_channels
        F, X = self.frame_samples, self.context_samples
        context = np.zeros((B, C, X), dtype=np.float32)
        frame = np.zeros((B, C, F), dtype=np.float32)
        target = np.zeros((B, C, F), dtype=np.float32)
        reset = np.zeros(B, dtype=bool)
        active = np.zeros(B, dtype=bool)
        track_ids = np.full(B, -1, dtype=np.int64)
        positions = np.full(B, -1, dtype=np.int64)
        valid = np.zeros(B, dtype=np.int64)
        for i, track, frame_index, offset in emits:
            x, y = self.tracks[track]
            n = x.shape[1]
            start = offset + frame_index * F
            stop = min(start + F, n)
            frame[i, :, : stop - start] = x[:, start:stop]
            target[i, :, : stop - start] = y[:, start:stop]
            c0 = start - self._context_before
            a, b = max(c0, 0), min(c0 + X, n)
            if b > a:
                context[i, :, a - c0 : b - c0] = x[:, a:b]
            reset[i] = frame_index == 0
            active[i] = True
            track_ids[i] = track
            positions[i] = start
            valid[i] = stop - start
        return StatefulBatch(
            context=context,
            frame=frame,
            target=target,
            reset=reset,
            active=active,
            track_ids=track_ids,
            positions=positions,
            valid_samples=valid,
            epoch=batch_epoch,
            end_of_epoch=batch_epoch in ended,
            epochs_completed=self._current_epoch,
            step=step,
        )

    def __iter__(self) -> Iterator[StatefulBatch]:
        """Yield the batches of the current epoch, up to and including ``end_of_epoch``.

        Calling ``iter`` again continues with the next epoch (in ``"wrap"`` mode
        the slots carry over; in ``"drain"`` mode all slots restart).
        """
        while True:
            batch = self.next_batch()
            yield batch
            if batch.end_of_epoch:
                return

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable snapshot of the stream position.

        A new batcher built with the same tracks and settings that loads this
        yields exactly the batches this one yields next.
        """
        return {
            "version": _STATE_VERSION,
            "fingerprint": self._fingerprint(),
            "stream_cursor": self._stream_cursor,
            "current_epoch": self._current_epoch,
            "remaining": {str(k): int(v) for k, v in sorted(self._remaining.items())},
            "step": self._step,
            "slots": [
                [s.track, s.epoch, s.stream_index, s.offset, s.frame_index, s.num_frames] for s in self._slots
            ],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a snapshot taken by :meth:`state_dict`.

        Raises:
            ValueError: the snapshot is from another version, or from a batcher
                with different tracks (lengths, channels) or settings (batch
                size, frame/context samples, seed, modes); the message names
                what differs.
        """
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"batcher state version {state.get('version')!r} != supported {_STATE_VERSION}")
        mine = self._fingerprint()
        theirs = state.get("fingerprint", {})
        diffs = [k for k in mine if mine[k] != theirs.get(k)]
        if diffs:
            detail = ", ".join(f"{k}: saved {theirs.get(k)!r} vs now {mine[k]!r}" for k in diffs)
            raise ValueError(f"cannot resume batcher: settings or tracks differ ({detail})")
        slots = state["slots"]
        if len(slots) != self.batch_size:
            raise ValueError(f"state has {len(slots)} slots, batcher has batch_size {self.batch_size}")
        self._stream_cursor = int(state["stream_cursor"])
        self._current_epoch = int(state["current_epoch"])
        self._remaining = {int(k): int(v) for k, v in state["remaining"].items()}
        self._step = int(state["step"])
        self._slots = [_Slot(*[int(v) for v in s]) for s in slots]

    def _fingerprint(self) -> dict[str, Any]:
        lengths = hashlib.sha256(self.track_lengths.tobytes()).hexdigest()[:16]
        return {
            "num_tracks": self.num_tracks,
            "track_lengths_sha": lengths,
            "num_channels": self.num_channels,
            "batch_size": self.batch_size,
            "frame_samples": self.frame_samples,
            "context_samples": self.context_samples,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "epoch_mode": self.epoch_mode,
            "pad_last_frame": self.pad_last_frame,
            "random_offset": self.random_offset,
        }

    # ------------------------------------------------------------ simulation
    def _clone_counters(self) -> "StatefulBatcher":
        sim = object.__new__(StatefulBatcher)
        sim.__dict__.update(self.__dict__)
        sim._slots = [_Slot(**vars(s)) for s in self._slots]
        sim._remaining = dict(self._remaining)
        sim._perm_cache = {}
        return sim

    def _simulate_drain_epoch(self, epoch: int) -> int:
        sim = self._clone_counters()
        sim._slots = [_Slot() for _ in range(self.batch_size)]
        sim._stream_cursor = epoch * self.num_tracks
        sim._current_epoch = epoch
        sim._remaining = {}
        n = 0
        while True:
            _, ended = sim._step_counters()
            n += 1
            if epoch in ended:
                return n


def _as_float32_2d(a: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{what} must be (channels, samples), got shape {a.shape}")
    if a.dtype != np.float32:
        a = a.astype(np.float32)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{what} contains NaN or Inf")
    return a

