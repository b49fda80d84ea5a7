"""A griffe extension: render the reST bits of aiolocks' docstrings as Markdown.

The docstrings are Google style with a little reST (``:class:`X``` roles, ``::`` literal
blocks, ``.. versionadded::``); mkdocstrings renders Markdown, so convert those before parsing.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|meth|attr|func|exc|data|obj|mod):`~?([^`]+)`")
VERSION = re.compile(r"^(\s*)\.\. versionadded:: (\S+)\s*$", re.M)


def _literal_blocks(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.rstrip().endswith("::"):
            out.append(line)
            i += 1
            continue
        head = line.rstrip()[:-1]
        out.append(head if head.strip() else "")
        base = len(line) - len(line.lstrip())
        i += 1
        block: list[str] = []
        while i < len(lines) and (
            not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > base
        ):
            block.append(lines[i])
            i += 1
        while block and not block[-1].strip():
            block.pop()
        code = [b for b in block if b.strip()]
        indent = min((len(b) - len(b.lstrip()) for b in code), default=base)
        pad = " " * base
        out += ["", pad + "```python"]
        first = next((k for k, b in enumerate(block) if b.strip()), len(block))
        out += [pad + b[indent:] if b.strip() else "" for b in block[first:]]
        out += [pad + "```", ""]
    return "\n".join(out)


def convert(text: str) -> str:
    text = ROLE.sub(lambda m: f"`{m.group(1)}`", text)
    text = VERSION.sub(lambda m: f"{m.group(1)}*Added in version {m.group(2)}.*", text)
    return _literal_blocks(text)


class RstDocstrings(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)
