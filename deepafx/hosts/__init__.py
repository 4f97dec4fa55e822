"""Plugin hosting: one :class:`~deepafx.hosts.base.Processor` interface over several backends."""

from deepafx.hosts.base import (
    AudioError,
    ParameterError,
    PluginError,
    Processor,
    ProcessorSpec,
    available_backends,
    build_processor,
    check_audio,
    register_backend,
)

__all__ = [
    "AudioError",
    "ParameterError",
    "PluginError",
    "Processor",
    "ProcessorSpec",
    "available_backends",
    "build_processor",
    "check_audio",
    "register_backend",
]
