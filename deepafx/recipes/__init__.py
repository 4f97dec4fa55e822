"""Recipes: one folder per task, one :class:`Recipe` object each, one registry.

A recipe is a package ``deepafx/recipes/<name>/`` whose ``__init__`` exposes
``RECIPE``, a :class:`Recipe` that declares

* its config sections (name → dataclass; defaults live in code, the YAML
  overrides them, an unknown section or key is an error naming it);
* its entry points: ``data`` (render the dataset), ``task`` (the
  :class:`~deepafx.trainer.TrainingTask` the shared :class:`~deepafx.trainer.Trainer`
  runs), ``evaluate``, and ``process`` / ``match`` where they apply.

The command line finds recipes only through :data:`RECIPES`. Adding a recipe:
its folder, one ``RECIPES.register`` line below, its configs under
``recipes/<name>/``, its ``tiny_overrides`` (with them tests/test_recipe_contract.py
binds, trains, resumes, runs under DDP and evaluates every registered recipe),
its own tests (see CONTRIBUTING.md).

Run folders have one layout for every recipe: :class:`deepafx.runs.RunLayout`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from deepafx.registry import Registry
from deepafx.runs import load_checkpoint, resolve_checkpoint


@dataclass(frozen=True)
class Recipe:
    """What a recipe declares.

    Attributes:
        name: Registry name; also the ``recipe:`` key of its configs.
        summary: One line for ``--help`` texts.
        sections: Config section name → dataclass (bound with :func:`bind_section`).
        data: ``data(config: RecipeConfig, out_dir: Path, force: bool) -> Path``.
        task: ``task(config: RecipeConfig, data_dir: Path, **options) -> TrainingTask``.
        evaluate: ``evaluate(config, checkpoint: Path, out_dir: Path, split: str, data_dir: Path) -> dict``.
        process: ``process(checkpoint, input_path, output_path, **options) -> result with .summary()``
            for ``deepafx process`` (recipes whose model renders audio files), or ``None``.
        match: ``match(args) -> exit code`` for ``deepafx match`` (sound matching; the
            parsed command line), or ``None``.
        train_options: Extra ``deepafx train`` options the task accepts (e.g. ``("pairs",)``).
        tiny_overrides: ``section.key=value`` overrides (``--set`` syntax) that shrink any of the
            recipe's packaged configs to a run of seconds on tiny data: a few short pieces or
            sounds, a tiny model, a few steps on one render worker, a tiny evaluation. Or a
            function of the raw config returning them, for settings that only some configs
            may take (see :meth:`tiny`). tests/test_recipe_contract.py runs every registered
            recipe with them (bind, train, resume, DDP, evaluate); a recipe without them fails there.
        item_scores: ``item_scores(eval_dir: Path, split: str) -> {method: {metric: {item: value}}}``:
            the per-item scores of one seed's evaluation (the folder its ``evaluate`` wrote), which
            ``deepafx evaluate`` pools over the seeds of a multi-seed run (:mod:`deepafx.seeds`);
            ``None`` when the recipe's results cannot be pooled.
        item_groups: ``item_groups(eval_dir: Path, split: str) -> {item: group}`` (e.g. the album of
            each excerpt): the pooled results are also given per group; ``None``: pooled only.
        metric_names: Metric key → display name for the pooled table (its order is the columns').
        method_labels: Method key → label in the pooled table (e.g. which rows are given the loudness).
        reference_method: The method the pooled paired differences are taken against (the trained model).
        pooled_pairs: Further ``(a, b)`` method pairs whose paired differences ``a − b`` are pooled over
            seeds too (e.g. a training stage against the stage it starts from); pairs with a method
            a seed did not score are left out.
    """

    name: str
    summary: str
    sections: Mapping[str, type]
    data: Callable[..., Path]
    task: Callable[..., Any]
    evaluate: Callable[..., dict]
    process: Callable[..., int] | None = None
    match: Callable[..., int] | None = None
    train_options: tuple[str, ...] = ()
    tiny_overrides: Sequence[str] | Callable[[Mapping[str, Any]], Sequence[str]] = ()
    item_scores: Callable[[Path, str], dict] | None = None
    item_groups: Callable[[Path, str], dict] | None = None
    metric_names: Mapping[str, str] | None = None
    method_labels: Mapping[str, str] | None = None
    reference_method: str = "model"
    pooled_pairs: tuple[tuple[str, str], ...] = ()

    def tiny(self, config: Mapping[str, Any]) -> list[str]:
        """The :attr:`tiny_overrides` for the raw config ``config`` (a ``recipe`` key plus sections)."""
        overrides = self.tiny_overrides
        return list(overrides(config) if callable(overrides) else overrides)

    def bind(self, config: Mapping[str, Any]) -> "RecipeConfig":
        """Bind a raw config mapping (``recipe`` key plus sections) to this recipe's dataclasses.

        Raises:
            ValueError: another recipe's config, an unknown section, or an unknown key
                (each message names it and lists the allowed ones).
        """
        raw = {k: v for k, v in config.items() if not str(k).startswith("_")}
        if raw.get("recipe", self.name) != self.name:
            raise ValueError(f"config is for recipe {raw.get('recipe')!r}, not {self.name!r}")
        unknown = sorted(set(raw) - set(self.sections) - {"recipe"})
        if unknown:
            raise ValueError(f"unknown config section(s) {unknown} for recipe {self.name!r}; "
                             f"allowed: {sorted(self.sections)}")
        bound = {name: bind_section(cls, raw.get(name), name) for name, cls in self.sections.items()}
        return RecipeConfig(self.name, bound, str(config.get("_path", "")))


@dataclass
class RecipeConfig:
    """A config bound to a recipe's dataclasses.

    Attributes:
        recipe: Recipe name.
        sections: Section name → dataclass instance.
        path: The YAML it came from (empty when built in code).
    """

    recipe: str
    sections: dict[str, Any]
    path: str = ""

    def __getattr__(self, name: str) -> Any:
        sections = self.__dict__.get("sections", {})
        if name in sections:
            return sections[name]
        raise AttributeError(f"recipe config has no section {name!r}")

    @property
    def stem(self) -> str:
        """The config's file name without extension (``quick``), or ``"config"``."""
        return Path(self.path).stem if self.path else "config"

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping (``recipe`` plus every section with all defaults filled in), YAML/JSON friendly."""
        return {"recipe": self.recipe, **{k: _plain(v) for k, v in self.sections.items()}}


def bind_section(cls: type, values: Mapping[str, Any] | None, section: str) -> Any:
    """Instantiate the dataclass of one config section.

    Classes with a ``from_dict`` classmethod (presets, validation) use it; others
    get :func:`deepafx.config.bind`. Errors are prefixed with the section name.

    Raises:
        ValueError: unknown keys or bad values, naming the section.
    """
    from deepafx.config import bind

    if values is not None and not isinstance(values, Mapping) and not hasattr(cls, "from_dict"):
        raise ValueError(f"[{section}] must be a mapping, got {type(values).__name__}")
    if hasattr(cls, "from_dict"):
        try:
            return cls.from_dict(values)
        except (TypeError, ValueError) as exc:
            msg = str(exc)
            raise ValueError(msg if msg.startswith(f"[{section}]") else f"[{section}] {msg}") from exc
    return bind(cls, values, section)


def _plain(obj: Any) -> Any:
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return _plain(obj.to_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    return obj


def checkpoint_recipe(path: str | Path, entry: str) -> Recipe:
    """The recipe that wrote the checkpoint at ``path``, checked to offer ``entry`` (``"process"``, ``"match"``).

    Raises:
        FileNotFoundError: no checkpoint there.
        ValueError: not a deepafx checkpoint, an unknown recipe, or a recipe without ``entry``
            (the recipes that have it are listed).
    """
    ckpt = load_checkpoint(resolve_checkpoint(path, prefer=("best", "real", "synth", "ploss")))
    name = ckpt.get("recipe") if isinstance(ckpt, Mapping) else None
    if name is None:
        raise ValueError(f"{path} is not a deepafx checkpoint (no recipe recorded); train one with `deepafx train`")
    recipe = get_recipe(str(name))
    if getattr(recipe, entry) is None:
        able = [n for n in RECIPES.names() if getattr(get_recipe(n), entry) is not None]
        raise ValueError(f"`deepafx {entry}` does not apply to {name!r} checkpoints; it applies to: {', '.join(able)}")
    return recipe


def default_data_dir(config: RecipeConfig) -> Path:
    """``data/<recipe>/<config name>``: where ``deepafx data`` writes and ``train``/``evaluate`` read by default."""
    return Path("data") / config.recipe / config.stem


def default_run_dir(config: RecipeConfig) -> Path:
    """``runs/<recipe>/<config name>``: the default run folder of ``deepafx train``."""
    return Path("runs") / config.recipe / config.stem


#: Every recipe, by name (lazy: ``"module:RECIPE"`` is imported on first use).
RECIPES: Registry[Recipe] = Registry("recipe")
RECIPES.register("mastering", "deepafx.recipes.mastering:RECIPE")
RECIPES.register("dexed_matching", "deepafx.recipes.dexed_matching:RECIPE")
RECIPES.register("amp_emulation", "deepafx.recipes.amp_emulation:RECIPE")


def get_recipe(name: str) -> Recipe:
    """The registered recipe ``name``.

    Raises:
        ValueError: unknown recipe (the known ones are listed).
    """
    return RECIPES.get(name)


__all__ = ["RECIPES", "Recipe", "RecipeConfig", "bind_section", "checkpoint_recipe", "default_data_dir",
           "default_run_dir", "get_recipe"]
