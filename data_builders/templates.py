"""Prompt templates: YAML files with the instruction, the input layout and the output words.

A template has one or more ``variants`` ({instruction, input}); with several, one is drawn per record
(seeded), P5-style. ``input`` uses ``{liked}``, ``{disliked}`` and ``{target}``; ``history_item`` and
``target_item`` wrap an item's text (``{item}``) and ``separator`` joins history items. An optional
``context`` line (``{item_likes}``, ``{item_ratings}``, ``{user_likes}``, ``{user_ratings}``: training-split
counts; ``{cf_like}``: the bias model's P(like) in percent; see ``data_builders.context``) fills the input's
``{context}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from tallrec_cli.core.errors import ConfigError

TEMPLATES_DIR = Path(__file__).parent / "templates"
COUNT_FIELDS = ("item_likes", "item_ratings", "user_likes", "user_ratings")
CONTEXT_FIELDS = (*COUNT_FIELDS, "cf_like")


@dataclass(frozen=True)
class Template:
    name: str
    variants: tuple[dict[str, str], ...]
    history_item: str
    target_item: str
    separator: str
    yes: str
    no: str
    context: str | None = None

    @property
    def uses_context(self) -> bool:
        return self.context is not None

    @property
    def context_fields(self) -> tuple[str, ...]:
        """The context fields the context line prints, in ``CONTEXT_FIELDS`` order."""
        return tuple(field for field in CONTEXT_FIELDS if "{" + field + "}" in (self.context or ""))

    def output(self, label: int) -> str:
        return self.yes if label else self.no

    def fill_input(self, variant: int, liked: list[str], disliked: list[str], target: str,
                   context: dict[str, int] | None = None) -> str:
        """The input text from already wrapped item texts (see ``structure.render_input`` for titles)."""
        line = self.context.format(**context) if self.context and context is not None else ""
        return self.variants[variant]["input"].format(
            liked=self.separator.join(liked), disliked=self.separator.join(disliked), target=target, context=line)


def template_names() -> list[str]:
    return sorted(path.stem for path in TEMPLATES_DIR.glob("*.yaml"))


def load_record_template(name_or_path: str) -> Template:
    """A bundled template by name (``tallrec-movie``) or any YAML file in the same layout."""
    path = Path(name_or_path)
    if not path.suffix:
        path = TEMPLATES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"template '{name_or_path}' not found",
                          f"use one of {', '.join(template_names())} or a path to a template YAML file")
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"template {path} is not valid YAML: {exc}".splitlines()[0]) from None
    try:
        # YAML 1.1 reads unquoted yes/no keys as booleans
        outputs = {"yes" if key is True else "no" if key is False else key: value
                   for key, value in spec["outputs"].items()}
        variants = tuple({"instruction": str(v["instruction"]), "input": str(v["input"])} for v in spec["variants"])
        template = Template(
            name=str(spec.get("name", path.stem)), variants=variants, history_item=str(spec["history_item"]),
            target_item=str(spec["target_item"]), separator=str(spec["separator"]),
            yes=str(outputs["yes"]), no=str(outputs["no"]),
            context=str(spec["context"]) if spec.get("context") is not None else None,
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"template {path} lacks {exc}",
                          "a template needs variants (instruction, input), history_item, target_item, separator "
                          "and outputs (yes, no); see data_builders/templates/tallrec-movie.yaml") from None
    if not variants or template.yes == template.no:
        raise ConfigError(f"template {path} needs at least one variant and two different outputs")
    try:
        template.history_item.format(item="")
        template.target_item.format(item="")
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"template {path}: history_item/target_item use an unknown placeholder {exc}",
                          "they may use only {item} (write {{ for a brace)") from None
    for variant in variants:
        try:
            variant["input"].format(liked="", disliked="", target="", context="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"template {path}: input uses an unknown placeholder {exc}",
                              "the input may use {liked}, {disliked}, {target} and {context} (write {{ for a "
                              "brace)") from None
    if template.context is not None:
        try:
            template.context.format(**dict.fromkeys(CONTEXT_FIELDS, 0))
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"template {path}: context uses an unknown placeholder {exc}",
                              "it may use " + ", ".join("{" + field + "}" for field in CONTEXT_FIELDS)) from None
        if not all("{context}" in variant["input"] for variant in variants):
            raise ConfigError(f"template {path} has a context line but a variant's input has no {{context}}")
    return template
