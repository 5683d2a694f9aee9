"""The structure a record carries beside its prompt text, so later stages read data instead of prose.

A built record stores its history as ``history``: items ``{"item_id", "title", "liked"}`` in time order,
the target's ``target_title``, and the ``template`` name and ``variant`` that rendered its ``input``.
Training-time shortening re-renders the input through that template; baselines and audits read the
fields. Records imported from TALLRec's JSON are parsed once, at import (:func:`parse_input`); there
the liked and disliked lists keep TALLRec's printed order (liked first), since its files lost the
interleaving.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_builders.templates import Template, load_record_template, template_names
from tallrec_cli.core.errors import DataError


@dataclass(frozen=True)
class HistoryItem:
    title: str
    liked: bool
    item_id: str | None = None

    def to_json(self) -> dict:
        return {"item_id": self.item_id, "title": self.title, "liked": self.liked}


def history(record: dict) -> list[HistoryItem] | None:
    """The record's history in time order, or None for a record without structure (hand-written)."""
    items = record.get("history")
    if items is None:
        return None
    return [HistoryItem(title=str(item["title"]), liked=bool(item["liked"]), item_id=item.get("item_id"))
            for item in items]


def label_of(record: dict, index: int | None = None) -> int:
    """A record's 0/1 label; anything else is a `DataError` naming the record."""
    label = record.get("label")
    if label not in (0, 1):
        raise DataError(f"record {record.get('id', index)} has no 0/1 label", "give each record a label of 1 or 0")
    return int(label)


def labels_of(records: Sequence[dict]) -> np.ndarray:
    return np.array([label_of(record, index) for index, record in enumerate(records)], dtype=np.int64)


def users_of(records: Sequence[dict]) -> list | None:
    """Every record's user id, or None when any record has none (``user_id`` missing or null): per-user
    metrics need them all."""
    return [record["user_id"] for record in records] if all(record.get("user_id") is not None
                                                             for record in records) else None


def has_structure(record: dict) -> bool:
    return record.get("history") is not None and record.get("target_title") is not None


def structure_fields(items: Sequence[HistoryItem], target_title: str, template: str | None,
                     variant: int | None) -> dict:
    return {"history": [item.to_json() for item in items], "target_title": target_title,
            "template": template, "variant": variant}


def render_input(template: Template, variant: int, items: Sequence[HistoryItem], target_title: str,
                 context: dict[str, int] | None = None) -> str:
    wrap = template.history_item.format
    return template.fill_input(variant, [wrap(item=i.title) for i in items if i.liked],
                               [wrap(item=i.title) for i in items if not i.liked],
                               template.target_item.format(item=target_title), context)


def drop_history(items: Sequence[HistoryItem], count: int) -> list[HistoryItem]:
    """``items`` less ``count`` of them: each time the oldest of the longer list (liked or disliked),
    so shortening never empties one side while the other is long."""
    kept = list(items)
    for _ in range(min(count, len(kept))):
        liked = [i for i, item in enumerate(kept) if item.liked]
        disliked = [i for i, item in enumerate(kept) if not item.liked]
        side = liked if len(liked) >= len(disliked) else disliked
        del kept[side[0]]
    return kept


def shortened(record: dict, count: int, template: Template) -> dict:
    """The record with ``count`` history items dropped and its input re-rendered through ``template``."""
    items = drop_history(history(record) or [], count)
    return {**record, **structure_fields(items, record["target_title"], record["template"], record["variant"]),
            "input": render_input(template, int(record["variant"] or 0), items, record["target_title"],
                                  record.get("context"))}


def find_template(name: str | None, near: str | Path | None = None) -> Template | None:
    """A record's template: the ``template.yaml`` that `data build` copies into a dataset folder built
    from a custom template (looked up beside ``near``), else a bundled template by name; None if neither."""
    if name is None:
        return None
    if near is not None:
        folder = Path(near) if Path(near).is_dir() else Path(near).parent
        copy = folder / "template.yaml"
        if copy.is_file():
            template = load_record_template(str(copy))
            if template.name == name:
                return template
    return load_record_template(name) if name in template_names() else None


def _input_pattern(layout: str, fields: tuple[str, ...] = ("liked", "disliked", "target", "context"),
                   value: str = ".*?") -> re.Pattern:
    """A regex with a named group per ``{field}`` of ``layout`` (an input layout or a context line)."""
    names = "|".join(re.escape("{" + field + "}") for field in fields)
    parts = re.split(f"({names})", layout.replace("{{", "{").replace("}}", "}"))
    pattern = "".join(f"(?P<{part[1:-1]}>{value})" if part[1:-1] in fields and part.startswith("{") else re.escape(part)
                      for part in parts)
    return re.compile(pattern + r"\Z", re.S)


def _parse_context(text: str, template: Template) -> dict[str, int] | None:
    """Context numbers back from a rendered context line ({} for an empty one, None if it does not match)."""
    if not text or template.context is None:
        return {} if not text else None
    match = _input_pattern(template.context, template.context_fields, r"\d+").match(text)
    return {key: int(value) for key, value in match.groupdict().items()} if match else None


def _unwrap(text: str, wrapper: str) -> str | None:
    prefix, _, suffix = wrapper.partition("{item}")
    if text.startswith(prefix) and text.endswith(suffix) and len(text) >= len(prefix) + len(suffix):
        return text[len(prefix):len(text) - len(suffix)]
    return None


def _split_items(text: str, template: Template) -> list[str] | None:
    """History texts split at the separator before each item's opening quote: the wrapper's own prefix,
    or for unwrapped items (TALLRec's book form, ``"Title" written by Author``) a quote each must start
    with; None when that cannot tell the items apart."""
    if not text:
        return []
    opener = template.history_item.partition("{item}")[0]
    pieces = re.split(re.escape(template.separator) + f"(?={re.escape(opener or chr(34))})", text)
    if not opener and not all(piece.startswith('"') for piece in pieces):
        return None
    titles = [_unwrap(piece, template.history_item) for piece in pieces]
    return None if any(title is None for title in titles) else titles


def parse_input(record: dict, templates: Sequence[Template]) -> dict | None:
    """Structure fields for a record known only by its text (TALLRec's released JSON), or None.

    Tried against each template variant whose instruction matches; accepted only when re-rendering
    the parsed structure gives the input back byte for byte.
    """
    for template in templates:
        for variant, spec in enumerate(template.variants):
            if spec["instruction"] != record["instruction"]:
                continue
            match = _input_pattern(spec["input"]).match(record["input"])
            if not match:
                continue
            groups = match.groupdict()
            liked = _split_items(groups.get("liked", ""), template)
            disliked = _split_items(groups.get("disliked", ""), template)
            target = _unwrap(groups.get("target", ""), template.target_item)
            context = _parse_context(groups.get("context", ""), template)
            if liked is None or disliked is None or target is None or context is None:
                continue
            items = [HistoryItem(t, True) for t in liked] + [HistoryItem(t, False) for t in disliked]
            if render_input(template, variant, items, target, context or None) == record["input"]:
                return {**structure_fields(items, target, template.name, variant),
                        **({"context": context} if context else {})}
    return None
