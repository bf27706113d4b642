"""Reads token usage from an OpenAI-compatible response without touching the bytes passed on."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_DATA = b"data:"
_USAGE = b'"usage"'
# a line longer than this is a content chunk, not the short usage event; it is skipped unparsed
_MAX_LINE = 1 << 20
# a usage object is about 150 bytes; what follows a "usage" key past this is not one
_MAX_USAGE_VALUE = 4096
# bytes of the previous chunk kept to see a key split between chunks and the backslashes before it
_KEPT_TAIL = 64
_USAGE_KEY = re.compile(rb'"usage"\s*:\s*')


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


def _escaped(window: bytes, position: int) -> bool:
    """Whether the quote at ``position`` is escaped (an odd run of backslashes before it)."""
    run = position
    while run > 0 and window[run - 1] == ord("\\"):
        run -= 1
    return (position - run) % 2 == 1


class BodyUsage:
    """Fed a whole JSON response as it passes, in chunks; keeps the object of its last ``"usage"``
    key, never the body: memory stays under a few KiB whatever the body's size.

    A ``"usage"`` key is recognised in the bytes without parsing the document. Text inside a JSON
    string cannot forge one: its quotes are escaped. A key of that name elsewhere (a completion's
    ``top_logprobs`` maps tokens to numbers) is ignored unless its value is an object; vLLM writes
    the response's own ``usage`` after its ``choices``, so the last object wins.
    """

    def __init__(self) -> None:
        self._usage = Usage()
        self._tail = b""
        self._value: bytearray | None = None

    def feed(self, chunk: bytes) -> None:
        window = self._tail + chunk
        fresh = len(self._tail)
        position = fresh
        start = max(0, fresh - len(_USAGE) + 1)
        while (hit := window.find(_USAGE, start)) != -1:
            start = hit + 1
            if _escaped(window, hit):
                continue
            if self._value is not None and hit > position:
                self._keep(window[position:hit])
            self._close_value()
            self._value = bytearray()
            position = hit
        if self._value is not None:
            self._keep(window[position:])
        self._tail = window[-_KEPT_TAIL:]

    def finish(self) -> Usage:
        """The usage once the whole body went through (zeros when it had none)."""
        self._close_value()
        return self._usage

    def _keep(self, data: bytes) -> None:
        assert self._value is not None
        self._value += data[: _MAX_USAGE_VALUE - len(self._value)]
        if len(self._value) >= _MAX_USAGE_VALUE:
            self._close_value()

    def _close_value(self) -> None:
        value, self._value = self._value, None
        if value is None:
            return
        key = _USAGE_KEY.match(value)
        if key is None:
            return
        try:
            usage, _end = json.JSONDecoder().raw_decode(value[key.end() :].decode(errors="replace"))
        except ValueError:
            return
        if isinstance(usage, dict):
            self._usage.update(usage)


def usage_from_body(body: bytes) -> Usage:
    """Usage of a whole (non-streamed) JSON response; zeros when there is none."""
    sniffer = BodyUsage()
    sniffer.feed(body)
    return sniffer.finish()


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
