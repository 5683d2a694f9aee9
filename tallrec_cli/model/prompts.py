"""Prompt templates (Alpaca, TALLRec-exact, the model's chat template) and label-token resolution.

A record's prompt is everything up to the answer; training appends the answer text ("Yes." / "No.")
and EOS, scoring reads the logits of the two label tokens at the position right after the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from tallrec_cli.core.errors import ConfigError, ModelError

_PROBE_RECORD = {
    "instruction": "Given the user's preference and unpreference, identify whether the user will like the "
                   'target movie by answering "Yes." or "No.".',
    "input": 'User Preference: "Toy Story (1995)"\nUser Unpreference: \n'
             'Whether the user will like the target movie "Fargo (1996)"?',
}


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    kind: str  # "text" or "chat"
    with_input: str
    without_input: str
    response_prefix: str

    def render(self, record: dict, tokenizer=None) -> str:
        """The prompt for ``record`` up to (not including) the answer."""
        has_input = bool(record.get("input"))
        body = (self.with_input if has_input else self.without_input).format(
            instruction=record["instruction"], input=record.get("input", ""))
        if self.kind == "chat":
            if tokenizer is None or not getattr(tokenizer, "chat_template", None):
                name = getattr(tokenizer, "name_or_path", "this tokenizer")
                raise ModelError(f"template 'chat' needs a chat template, and {name} has none",
                                 "use --set prompt.template=alpaca")
            body = tokenizer.apply_chat_template(
                [{"role": "user", "content": body}], tokenize=False, add_generation_prompt=True)
        return body + self.response_prefix


def available_templates() -> list[str]:
    folder = resources.files("tallrec_cli.model") / "prompt_templates"
    return sorted(Path(entry.name).stem for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def load_template(name_or_path: str) -> PromptTemplate:
    """A template by name (alpaca, tallrec-exact, chat) or from a YAML file with the same keys."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        text = path.read_text(encoding="utf-8")
    else:
        resource = resources.files("tallrec_cli.model") / "prompt_templates" / f"{name_or_path}.yaml"
        if not resource.is_file():
            raise ConfigError(f"unknown prompt template '{name_or_path}'",
                              f"use one of {', '.join(available_templates())} or a path to a YAML file")
        text = resource.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    missing = {"name", "kind", "with_input", "without_input", "response_prefix"} - set(data)
    if missing:
        raise ConfigError(f"template {name_or_path} lacks {', '.join(sorted(missing))}")
    if data["kind"] not in ("text", "chat"):
        raise ConfigError(f"template {name_or_path}: kind must be text or chat, not {data['kind']!r}")
    return PromptTemplate(**{key: data[key] for key in ("name", "kind", "with_input", "without_input",
                                                        "response_prefix")})


@dataclass(frozen=True)
class LabelTokens:
    """Token ids read at the answer position: P(yes) = softmax(logits[[positive_id, negative_id]])[0]."""
    positive_word: str
    negative_word: str
    positive_id: int
    negative_id: int

    def as_dict(self) -> dict:
        return {"positive_word": self.positive_word, "negative_word": self.negative_word,
                "positive_id": self.positive_id, "negative_id": self.negative_id}


def _answer_tokens(tokenizer, prompt: str, answer: str) -> list[int]:
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(prompt + answer, add_special_tokens=False)["input_ids"]
    if full_ids[: len(prompt_ids)] != prompt_ids:
        return []  # the answer merged with the end of the prompt: no clean answer position
    return full_ids[len(prompt_ids):]


def resolve_label_tokens(tokenizer, template: PromptTemplate, positive: str = "Yes", negative: str = "No",
                         outputs: tuple[str, str] | None = None) -> LabelTokens:
    """Resolve the label words to single token ids *in context* (right after the response prefix).

    ``outputs`` are the full training answers (e.g. "Yes." / "No."): their first token must be the
    label token, or the model would be trained on one token and scored on another.
    """
    prompt = template.render(_PROBE_RECORD, tokenizer)
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    ids = []
    for word in (positive, negative):
        tokens = _answer_tokens(tokenizer, prompt, word)
        if len(tokens) != 1:
            pieces = [tokenizer.decode([token]) for token in tokens]
            raise ModelError(
                f"label word {word!r} is not a single token for tokenizer {name} after the response prefix "
                f"(it splits into {pieces})",
                "choose label words that are single tokens, e.g. --set labels.positive=Yes --set labels.negative=No",
            )
        ids.append(tokens[0])
    if ids[0] == ids[1]:
        raise ModelError(f"label words {positive!r} and {negative!r} map to the same token in {name}",
                         "choose two different label words")
    for word, token, output in zip((positive, negative), ids, outputs or ()):
        tokens = _answer_tokens(tokenizer, prompt, output)
        if not tokens or tokens[0] != token:
            raise ModelError(
                f"answer {output!r} does not start with the label token of {word!r} in tokenizer {name}",
                "make the dataset's outputs start with the label words (e.g. 'Yes.' for 'Yes')",
            )
    return LabelTokens(positive, negative, ids[0], ids[1])
