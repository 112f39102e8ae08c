"""YAML from users (spec and config files, ``--set`` values), read within limits.

PyYAML's safe loader still lets a file hang the harness (aliases that expand to billions of values),
crash it (50,000 nested brackets exhaust the recursion limit), or quietly lose a setting (a repeated
key keeps the last value). This loader refuses all three while it composes the document, before any
Python object is built, so whatever comes out is a small tree the rest of the harness can walk.
Every refusal is a ``YamlError`` of one line; callers add the file or the override it came from.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

MAX_BYTES = 1_000_000  # a spec is a page of text; anything near this is not one
MAX_DEPTH = 32  # nesting levels after aliases are expanded (specs use about 5)
MAX_VALUES = 10_000  # scalars, lists and mappings after aliases are expanded (specs have a few hundred)


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class YamlError(ValueError):
    """A document this harness will not read; the message is one line, without the source."""


class _Loader(yaml.SafeLoader):
    """A safe loader that records each node's expanded size and depth and checks keys as it goes."""

    def __init__(self, text: str):
        super().__init__(text)
        self._path: list[str] = []  # keys and indices from the root to the node being composed
        self._values = 0  # values composed so far, an alias counting as everything it stands for

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node = self.anchors.get(event.anchor)
            if node is not None and not hasattr(node, "size"):  # the alias sits inside its own anchor
                raise self._error(f"alias *{event.anchor} refers to a value that contains it", event)
            node = super().compose_node(parent, index)
            self._count(node.size, event)
            return node
        if event.tag is not None:  # the safe loader refuses python/* tags; we refuse every tag
            tag = event.tag.replace("tag:yaml.org,2002:", "!!")
            raise self._error(f"YAML tags such as {tag!r} are not allowed", event)
        self._path.append(index.value if isinstance(index, ScalarNode) else "" if index is None else str(index))
        if len(self._path) > MAX_DEPTH:
            raise self._error(f"nested more than {MAX_DEPTH} levels deep", event)
        self._count(1, event)  # counted on the way in: pure-Python PyYAML reads about 15,000 values/s
        node = super().compose_node(parent, index)
        children = (
            [n for pair in node.value for n in pair]
            if isinstance(node, MappingNode)
            else node.value
            if isinstance(node, SequenceNode)
            else []
        )
        node.size = 1 + sum(c.size for c in children)
        node.depth = 1 + max((c.depth for c in children), default=0)
        if node.depth > MAX_DEPTH:
            raise self._error(f"nested more than {MAX_DEPTH} levels deep once aliases are expanded", event)
        if isinstance(node, MappingNode):
            self._check_keys(node)
        self._path.pop()
        return node

    def _count(self, n: int, event) -> None:
        self._values += n
        if self._values > MAX_VALUES:
            raise self._error(f"more than {MAX_VALUES:,} values (aliases expanded)", event)

    def _check_keys(self, node: MappingNode) -> None:
        # PyYAML keeps the last of two equal keys; a second ``train:`` would silently replace the first.
        seen: dict[tuple, Any] = {}
        for key, _ in node.value:
            if isinstance(key, ScalarNode):
                first = seen.setdefault((key.tag, key.value), key)
                if first is not key:
                    where = ".".join(p for p in self._path[1:] if p) + ": " if len(self._path) > 1 else ""
                    raise YamlError(
                        f"{where}duplicate key {key.value!r} at line {key.start_mark.line + 1} "
                        f"(first at line {first.start_mark.line + 1})"
                    )

    def _error(self, problem: str, event) -> YamlError:
        mark = event.start_mark
        return YamlError(f"line {mark.line + 1}, column {mark.column + 1}: {problem}")


def load_text(text: str) -> Any:
    """Parse one YAML document within the limits above; raise ``YamlError`` (one line) otherwise."""
    if len(text) > MAX_BYTES:
        raise YamlError(f"longer than {MAX_BYTES:,} characters")
    bad = yaml.reader.Reader.NON_PRINTABLE.search(text)
    if bad:  # NUL and other control characters; PyYAML's own message spans two lines
        line = text.count("\n", 0, bad.start()) + 1
        column = bad.start() - (text.rfind("\n", 0, bad.start()) + 1) + 1
        raise YamlError(f"line {line}, column {column}: character U+{ord(bad.group()):04X} is not allowed in YAML")
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    except YamlError:
        raise
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = err.problem or err.context or "malformed"
        raise YamlError(f"{where}malformed YAML: {problem}") from None
    except yaml.YAMLError as err:
        raise YamlError(f"malformed YAML: {str(err).splitlines()[0]}") from None
    except ValueError as err:  # Python refuses integers of more than 4,300 digits
        raise YamlError(f"malformed YAML: {str(err).split(';')[0]}") from None
    finally:
        loader.dispose()


def read_bytes(path: Path) -> str:
    """The file's text: strict UTF-8 (a byte-order mark is allowed), at most ``MAX_BYTES``.

    Only a regular file: a FIFO would block the read until someone writes to it (forever, if nobody does),
    a device never ends. It is opened without blocking and checked on the open descriptor, so what is read
    is what was checked.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = next((k for test, k in _KINDS if test(mode)), "not a regular file")
        raise YamlError(f"is {kind}, not a file; write the YAML to a file")
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise YamlError(f"larger than {MAX_BYTES:,} bytes; a spec is a page of text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise YamlError(f"line {line}: byte 0x{data[err.start]:02x} is not UTF-8 text") from None
