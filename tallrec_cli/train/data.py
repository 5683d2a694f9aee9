"""Training records as the trainer sees them: the split loaded, the few-shot sample drawn, each record
fitted to ``prompt.max_length`` (history titles dropped oldest first, the answer never cut) and rendered to
prompt / completion pairs; validation prompts rendered the same way."""

from __future__ import annotations

from dataclasses import dataclass, field

from data_builders import load_split, sample_records
from data_builders.structure import find_template, has_structure, shortened
from data_builders.templates import Template
from tallrec_cli.core.errors import DataError
from tallrec_cli.train.config import TrainConfig


@dataclass
class PreparedData:
    train_records: list[dict]
    valid_records: list[dict]
    train_prompts: list[str]
    train_completions: list[str]
    valid_prompts: list[str]
    valid_labels: list[int]
    truncated_records: int
    train_token_lengths: list[int]
    notes: list[str] = field(default_factory=list)


def _load_split(path: str, split: str) -> list[dict]:

    records = load_split(path, split)
    if not records:
        raise DataError(f"{path}: the {split} split holds no records", "build the dataset again or pass another file")
    return records


def _sample(records: list[dict], count: int | None, seed: int, stratify: bool) -> list[dict]:

    if count is None or count >= len(records):
        return records
    return sample_records(records, count, seed, stratify=stratify)


def _smallest_fitting(low: int, high: int, fits) -> int | None:
    """Smallest k in [low, high] with fits(k) (fits is monotone), or None."""
    if not fits(high):
        return None
    while low < high:
        middle = (low + high) // 2
        if fits(middle):
            high = middle
        else:
            low = middle + 1
    return low


def fit_record(record: dict, tokenizer, template, completion: str, max_length: int,
               record_template: Template | None = None) -> tuple[dict, bool]:
    """Shorten ``record``'s input so prompt + completion fits ``max_length`` tokens; never cut the answer.

    A record with structure drops history items (the oldest of the longer liked/disliked list first)
    and is re-rendered through its own ``record_template``; without structure, or when even an empty
    history is too long, the input text is cut from the left (the target question sits at its end).
    """
    def length(candidate: dict) -> int:
        return len(tokenizer(template.render(candidate, tokenizer) + completion)["input_ids"])

    if length(record) <= max_length:
        return record, False
    text = record.get("input") or ""
    items = len(record["history"]) if record_template is not None and has_structure(record) else 0
    if items:
        dropped = _smallest_fitting(1, items, lambda k: length(shortened(record, k, record_template)) <= max_length)
        if dropped is not None:
            return shortened(record, dropped, record_template), True
        record = shortened(record, items, record_template)
        text = record["input"]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]

    def cut(k: int) -> dict:
        return {**record, "input": tokenizer.decode(ids[k:]).lstrip()}

    start = _smallest_fitting(0, len(ids), lambda k: length(cut(k)) <= max_length)
    if start is None:
        raise DataError(f"record {record.get('id', '?')}: the instruction and answer alone exceed prompt.max_length={max_length} tokens",
                        "raise prompt.max_length")
    return cut(start), True


def prepare_data(config: TrainConfig, tokenizer, template) -> PreparedData:
    """Load, sample and render the records; histories shortened to fit the cutoff."""
    data = config.data
    train = _load_split(data.train, "train")
    valid = _load_split(data.valid or data.train, "valid")
    notes = []
    if data.shots is not None and data.shots > len(train):
        notes.append(f"data.shots={data.shots} is more than the {len(train)} training records: all of them are used")
    train = _sample(train, data.shots, data.sample_seed, data.stratify)
    valid = _sample(valid, data.max_valid, data.sample_seed, stratify=True)
    eos = tokenizer.eos_token or ""
    truncated = 0
    templates: dict[tuple, Template | None] = {}

    def fitted(record: dict, completion: str, near: str) -> dict:
        nonlocal truncated
        key = (record.get("template"), near)
        if key not in templates:
            templates[key] = find_template(record.get("template"), near)
        record, was_cut = fit_record(record, tokenizer, template, completion, config.prompt.max_length,
                                     templates[key])
        truncated += was_cut
        return record

    train_prompts, completions, lengths = [], [], []
    for record in train:
        completion = record["output"] + eos
        prompt = template.render(fitted(record, completion, data.train), tokenizer)
        train_prompts.append(prompt)
        completions.append(completion)
        lengths.append(len(tokenizer(prompt + completion)["input_ids"]))
    valid_prompts = [template.render(fitted(record, record["output"] + eos, data.valid or data.train), tokenizer)
                     for record in valid]
    return PreparedData(train, valid, train_prompts, completions, valid_prompts,
                        [int(record["label"]) for record in valid], truncated, lengths, notes)


def valid_users(records: list[dict]) -> list | None:
    """Validation records' user ids (for GAUC), when every record carries one."""
    users = [record.get("user_id") for record in records]
    return None if any(user is None for user in users) else users


def answer_outputs(records: list[dict], config: TrainConfig) -> tuple[str, str]:
    """The dataset's answers for a like and a dislike, checked against the label tokens."""
    outputs = {}
    for record in records:
        outputs.setdefault(int(record["label"]), record["output"])
    return (outputs.get(1, f"{config.labels.positive}."), outputs.get(0, f"{config.labels.negative}."))
