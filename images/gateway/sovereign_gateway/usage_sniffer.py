"""Reads token usage from an OpenAI-compatible response without touching the bytes passed on."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

_DATA = b"data:"
_USAGE = b'"usage"'
# a line longer than this is a content chunk, not the short usage event; it is skipped unparsed
_MAX_LINE = 1 << 20


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def update(self, usage: Any) -> None:
        if isinstance(usage, dict):
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            if isinstance(prompt, int):
                self.prompt_tokens = prompt
            if isinstance(completion, int):
                self.completion_tokens = completion


def usage_from_body(body: bytes) -> Usage:
    """Usage of a whole (non-streamed) JSON response; zeros when there is none."""
    usage = Usage()
    if _USAGE in body:
        try:
            document = json.loads(body)
        except ValueError:
            return usage
        if isinstance(document, dict):
            usage.update(document.get("usage"))
    return usage


class StreamUsage:
    """Fed the streamed bytes as they pass; keeps the last ``usage`` object of a ``data:`` event."""

    def __init__(self) -> None:
        self.usage = Usage()
        self._partial = b""

    def feed(self, chunk: bytes) -> None:
        if _USAGE not in chunk and not self._partial:
            if chunk.endswith(b"\n"):
                return
            self._partial = chunk.rpartition(b"\n")[2][-_MAX_LINE:]
            return
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()[-_MAX_LINE:]
        for line in lines:
            if line.startswith(_DATA) and _USAGE in line:
                try:
                    event = json.loads(line[len(_DATA) :])
                except ValueError:
                    continue
                if isinstance(event, dict) and event.get("usage") is not None:
                    self.usage.update(event["usage"])
