"""Shared pieces of the data tests: tokenizers and small real-looking dataset files."""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path

ALPACA = [
    {"instruction": "Name a fruit that is yellow.", "input": "", "output": "A banana is yellow."},
    {"instruction": "Add the two numbers.", "input": "12 and 30", "output": "42"},
    {"instruction": "Translate to French.", "input": "good morning", "output": "bonjour"},
]
DOLLY = [
    {"instruction": "When was the bridge finished?", "context": "The bridge opened to traffic in 1932.",
     "response": "It was finished in 1932.", "category": "closed_qa"},
    {"instruction": "List two colours.", "context": "", "response": "Red and blue.", "category": "brainstorming"},
]
PROMPT_COMPLETION = [{"prompt": "The opposite of up is", "completion": "down"},
                     {"prompt": "Two plus two is", "completion": "four"}]
PROMPT_RESPONSE = [{"prompt": "Say hello politely.", "response": "Hello, nice to meet you."},
                   {"prompt": "Give me a number.", "response": "Seven."}]
QUESTION_ANSWER = [{"question": "What is the boiling point of water at sea level?", "answer": "100 degrees Celsius",
                    "source": "notes"},
                   {"question": "How many legs has a spider?", "answer": "Eight"}]
INPUT_OUTPUT = [{"input": "reverse: abc", "output": "cba"}, {"input": "reverse: xy", "output": "yx"}]
MESSAGES = [
    {"messages": [{"role": "system", "content": "You answer briefly."},
                  {"role": "user", "content": "Hi!"},
                  {"role": "assistant", "content": "Hello."},
                  {"role": "user", "content": "What is 2+2?"},
                  {"role": "assistant", "content": "4"}]},
    {"messages": [{"role": "user", "content": "Name a planet."}, {"role": "assistant", "content": "Mars."}]},
]
SHAREGPT = [
    {"id": "a1", "conversations": [{"from": "human", "value": "Tell me a colour."},
                                   {"from": "gpt", "value": "Green."},
                                   {"from": "human", "value": "Another one?"},
                                   {"from": "gpt", "value": "Purple."}]},
    {"id": "a2", "conversations": [{"from": "system", "value": "Be kind."},
                                   {"from": "human", "value": "Thanks!"},
                                   {"from": "gpt", "value": "You are welcome."}]},
]
TEXT = [{"text": "The river runs through the old town and under three stone bridges."},
        {"text": "In spring the hills turn green and the farmers plant their fields."}]

ALL_FORMATS = {
    "alpaca": ALPACA, "dolly": DOLLY, "prompt_completion": PROMPT_COMPLETION,
    "prompt_response": PROMPT_RESPONSE, "question_answer": QUESTION_ANSWER, "input_output": INPUT_OUTPUT,
    "messages": MESSAGES, "sharegpt": SHAREGPT, "text": TEXT,
}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return path


def write_delimited(path: Path, rows: list[dict], delimiter: str = ",") -> Path:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, delimiter=delimiter)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()})
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@functools.lru_cache(maxsize=1)
def smollm_tokenizer():
    """The embedded model's tokenizer (pad == eos == <|im_end|>), loaded once per session."""
    from fnapi.models.source import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


def tiny_pad_is_eos():
    """The tiny test tokenizer with pad set to eos, as SmolLM2 ships."""
    from fnapi.models.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
