"""Chains: ordered processors with one flat normalized parameter vector.

A :class:`ChainSpec` is declarative and picklable (a list of
:class:`~deepafx.hosts.base.ProcessorSpec` plus a sample rate); it can be written
in Python or loaded from a YAML/JSON file (a packaged chain such as
``zam_mastering`` is found by name, :func:`deepafx.assets.resolve_chain`). It knows the flat
*learned* parameter table without loading any plugin only when the tables are
given; otherwise :meth:`ChainSpec.param_table` builds the chain once to read them.

A :class:`Chain` is the live, stateful instance built from a spec inside one
process (a render worker). ``Chain.process(audio, x)`` takes the flat normalized
learned vector ``x`` ``(num_params,)`` on [0, 1], maps each processor's slice to
plugin units, fills fixed and default values, and renders the processors in order.
Its fixed cost per render is kept small: the audio is checked once at the chain's
input, the parameters are mapped in one vector operation, a plugin parameter is
written only when its value changes, and consecutive pedalboard built-ins render
in one pedalboard call (:class:`~deepafx.hosts.builtin.FusedBoards`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from deepafx.assets import plugins_dir, resolve_chain
from deepafx.hosts.base import NonFiniteOutputError, Processor, ProcessorSpec, build_processor, check_audio
from deepafx.params import ParamTable, ParameterError

#: What a chain does with a block one of its processors renders with NaN/Inf samples (:attr:`ChainSpec.nonfinite`).
NONFINITE_POLICIES = ("raise", "mark")

#: The plugin asset folder (:func:`deepafx.assets.plugins_dir`; the installed copy, or the repository's ``plugins/``).
PLUGINS_DIR = plugins_dir()


@dataclass(frozen=True)
class ChainSpec:
    """Declarative description of a processing chain.

    Args:
        processors: Processor specs in processing order; names must be unique.
        sample_rate: Rate in Hz every processor runs at.
        name: Label used in logs and listings.
        nonfinite: What :meth:`Chain.process` does when a processor renders NaN/Inf
            samples: ``"raise"`` (default) raises
            :class:`~deepafx.hosts.base.NonFiniteOutputError`; ``"mark"`` returns
            the render as a block of NaN (see :meth:`Chain.process`). A setting
            of the code that renders, not of the chain: :class:`deepafx.fx.FxLayer`
            renders with ``"mark"`` to drop such items from a step, and
            :meth:`to_dict` / :meth:`from_dict` leave it out.

    Raises:
        ValueError: duplicate processor names, no processor, a sample rate
            ≤ 0, or an unknown ``nonfinite`` policy.
    """

    processors: tuple[ProcessorSpec, ...]
    sample_rate: float = 44100.0
    name: str = "chain"
    nonfinite: str = "raise"

    def __post_init__(self) -> None:
        object.__setattr__(self, "processors", tuple(self.processors))
        names = [p.name for p in self.processors]
        if len(set(names)) != len(names):
            raise ValueError(f"processor names in a chain must be unique, got {names}")
        if not self.processors:
            raise ValueError("a chain needs at least one processor")
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {self.sample_rate}")
        if self.nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {self.nonfinite!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ChainSpec":
        """From ``{"sample_rate": Hz, "name": str, "processors": [ {backend, name, ...}, ... ]}``."""
        if "processors" not in d:
            raise ValueError("chain config needs a 'processors' list")
        return cls(
            processors=tuple(ProcessorSpec.from_dict(p) for p in d["processors"]),
            sample_rate=float(d.get("sample_rate", 44100.0)),
            name=str(d.get("name", "chain")),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> "ChainSpec":
        """Load a YAML or JSON chain file, or a packaged chain by name.

        Args:
            path: A chain file (absolute or relative to the working directory), or
                a packaged chain name: ``zam_mastering``, ``zam_mastering.yaml`` or
                ``chains/zam_mastering.yaml`` (:func:`deepafx.assets.resolve_chain`).
                A file may hold the chain at top level or under a ``chain`` key.

        Returns:
            The declarative chain (no plugin is loaded).

        Raises:
            FileNotFoundError: no such file or packaged chain; the one-line
                message lists the places tried and the packaged chains.
            ValueError: malformed content.
        """
        p = resolve_chain(path)
        text = p.read_text()
        if p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
        if isinstance(data, Mapping) and "chain" in data:
            data = data["chain"]
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form that :meth:`from_dict` reads back (checkpoints, configs)."""
        procs = []
        for p in self.processors:
            d: dict[str, Any] = {"backend": p.backend, "name": p.name, "options": dict(p.options)}
            if p.learn is not None:
                d["learn"] = list(p.learn)
            if p.fixed:
                d["fixed"] = dict(p.fixed)
            if p.ranges:
                d["ranges"] = {k: list(v) for k, v in p.ranges.items()}
            procs.append(d)
        return {"name": self.name, "sample_rate": self.sample_rate, "processors": procs}

    def with_sample_rate(self, sample_rate: float) -> "ChainSpec":
        return ChainSpec(self.processors, float(sample_rate), self.name, self.nonfinite)

    def build(self) -> "Chain":
        """Instantiate every processor in this process."""
        return Chain(self)

    @cached_property
    def param_table(self) -> ParamTable:
        """Flat table of the *learned* parameters, names ``"proc.param"`` (builds the chain once)."""
        chain = self.build()
        try:
            return chain.param_table
        finally:
            chain.close()

    @property
    def num_params(self) -> int:
        return len(self.param_table)


class Chain:
    """Live chain of processors built from a :class:`ChainSpec` (one process only).

    State: each processor keeps its state across :meth:`process` calls until
    :meth:`reset`. Latency: :attr:`latency_samples` is the sum of the processors'
    reported latencies; output length always equals input length. NaN/Inf
    output: :attr:`ChainSpec.nonfinite`.
    """

    def __init__(self, spec: ChainSpec):
        self.spec = spec
        self.processors: list[Processor] = []
        try:
            for ps in spec.processors:
                self.processors.append(build_processor(ps, spec.sample_rate))
        except BaseException:
            self.close()
            raise
        self._full_values: list[np.ndarray] = []
        self._learn_idx: list[np.ndarray] = []
        tables = []
        for ps, proc in zip(spec.processors, self.processors):
            table = proc.param_table
            learn = list(ps.learn) if ps.learn is not None else [p.name for p in table if p.name not in ps.fixed]
            for n in learn:
                table.index(n)  # raises with known names
                if n in ps.fixed:
                    raise ParameterError(f"{ps.name}.{n} is both learned and fixed")
            values = table.values_from_mapping(ps.fixed)
            learned = table.subset(learn).narrowed(ps.ranges) if ps.ranges else table.subset(learn)
            for n in ps.ranges:
                if n not in learn:
                    raise ParameterError(f"{ps.name}.{n}: a range is given but the parameter is not learned")
            self._full_values.append(values)
            self._learn_idx.append(np.array([table.index(n) for n in learn], dtype=np.int64))
            tables.append(learned.prefixed(ps.name))
        self.tables = tables
        self.param_table = ParamTable(tuple(p for t in tables for p in t))
        # One flat vector of every processor's plugin values; the learned entries are scattered into it.
        sizes = [len(v) for v in self._full_values]
        starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._flat_defaults = np.concatenate(self._full_values) if self._full_values else np.zeros(0)
        self._flat_learn = np.concatenate([idx + a for idx, a in zip(self._learn_idx, starts)]).astype(np.int64)
        self._bounds = list(zip(starts[:-1].tolist(), starts[1:].tolist()))
        self._stages = _stages(self.processors)
        self._initialised = False
        self._mark_nonfinite = spec.nonfinite == "mark"

    @property
    def latency_samples(self) -> int:
        return int(sum(p.latency_samples for p in self.processors))

    @property
    def is_instrument(self) -> bool:
        return bool(self.processors) and self.processors[0].is_instrument

    @property
    def num_render_calls(self) -> int:
        """Host calls per :meth:`process`: consecutive pedalboard built-ins count once (they render in one call)."""
        return len(self._stages)

    def plugin_values(self, x: np.ndarray) -> list[np.ndarray]:
        """Normalized learned vector ``(num_params,)`` on [0, 1] → per-processor plugin values.

        Returns:
            One ``(num_params_of_processor,)`` float64 vector per processor, in
            plugin units: learned entries from ``x``, fixed and default entries
            as configured.

        Raises:
            ParameterError: wrong shape, NaN/Inf, or a value outside [0, 1] (names the parameter).
        """
        x = np.asarray(x, dtype=np.float64)
        if x.shape != (len(self.param_table),):
            raise ParameterError(f"chain {self.spec.name!r} expects {len(self.param_table)} parameters, got shape {x.shape}")
        flat = self._flat_defaults.copy()
        flat[self._flat_learn] = self.param_table.denormalize(x)
        return [flat[a:b] for a, b in self._bounds]

    def process(self, audio: np.ndarray, x: np.ndarray | None = None) -> np.ndarray:
        """Render one block through every processor, continuing their state.

        Consecutive pedalboard built-ins render in one pedalboard call
        (:class:`~deepafx.hosts.builtin.FusedBoards`; the same output as one call
        each), and a parameter is written to its plugin only when its value
        changed since the last call.

        Args:
            audio: ``(channels, samples)`` float32 at ``spec.sample_rate`` Hz.
            x: Normalized learned parameters ``(num_params,)`` on [0, 1]; ``None``
                keeps the values set last (defaults/fixed at start).

        Returns:
            ``(channels_out, samples)`` float32, same number of samples. With
            ``spec.nonfinite == "mark"``, a render in which a processor produced
            NaN/Inf samples comes back entirely NaN; that processor is reset
            (its state may hold them) and the processors after it render its
            output with those samples set to 0, so their state stays finite.

        Raises:
            AudioError, ParameterError, PluginError: see :meth:`Processor.process`.
            NonFiniteOutputError: a processor produced NaN/Inf samples (a
                ``PluginError``; only with ``spec.nonfinite == "raise"``).
        """
        audio = check_audio(audio)
        if x is not None:
            values: list[np.ndarray | None] = self.plugin_values(x)
        elif not self._initialised:
            values = list(self._full_values)
        else:
            values = [None] * len(self.processors)
        self._initialised = True
        nonfinite = False
        for stage, idx in self._stages:
            try:
                if len(idx) == 1:
                    audio = stage.render_block(audio, values[idx[0]])
                else:
                    audio = stage.render_block(audio, [values[i] for i in idx])
            except NonFiniteOutputError as exc:
                if not self._mark_nonfinite or exc.output is None:
                    raise
                nonfinite = True
                self._reset_stage(stage, idx)
                audio = np.nan_to_num(exc.output, nan=0.0, posinf=0.0, neginf=0.0)
        if nonfinite:
            audio = np.full_like(audio, np.nan)
        return audio

    @staticmethod
    def _reset_stage(stage: Any, idx: list[int]) -> None:
        stage.reset()
        if len(idx) == 1:
            stage.clear_pending()

    def reset(self) -> None:
        """Reset every processor's state."""
        for stage, idx in self._stages:
            self._reset_stage(stage, idx)

    def close(self) -> None:
        for p in self.processors:
            close = getattr(p, "close", None)
            if close is not None:
                close()

    def describe(self) -> str:
        lines = [f"chain {self.spec.name!r} @ {self.spec.sample_rate:g} Hz, latency {self.latency_samples} samples"]
        for ps, t in zip(self.spec.processors, self.tables):
            lines.append(f"  [{ps.name}] {ps.backend}: {len(t)} learned parameter(s)")
            lines += ["    " + p.describe() for p in t]
        return "\n".join(lines)


def _stages(processors: list[Processor]) -> list[tuple[Any, list[int]]]:
    """Render stages ``(stage, processor indices)``: single processors, and runs of two or more
    fusable pedalboard built-ins as one :class:`~deepafx.hosts.builtin.FusedBoards` (a run ends
    after a processor with latency, so delays are padded where they were)."""
    stages: list[tuple[Any, list[int]]] = []
    run: list[int] = []

    def flush() -> None:
        if len(run) >= 2:
            from deepafx.hosts.builtin import FusedBoards

            stages.append((FusedBoards([processors[i] for i in run]), list(run)))
        elif run:
            stages.append((processors[run[0]], list(run)))
        run.clear()

    for i, proc in enumerate(processors):
        if proc.fusable_board is not None and proc.num_input_channels is None:
            run.append(i)
            if proc.latency_samples:
                flush()
        else:
            flush()
            stages.append((proc, [i]))
    flush()
    return stages


def chain(*processors: ProcessorSpec | Mapping[str, Any], sample_rate: float = 44100.0, name: str = "chain") -> ChainSpec:
    """Convenience constructor: ``chain(spec_or_dict, ...)`` → :class:`ChainSpec`."""
    specs = [p if isinstance(p, ProcessorSpec) else ProcessorSpec.from_dict(p) for p in processors]
    return ChainSpec(tuple(specs), float(sample_rate), name)
