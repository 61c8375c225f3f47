"""YAML of a spec: its node graph (bounded depth and size), and the line of each key for error messages."""

from __future__ import annotations

import yaml

from kto_bench.errors import SpecError

# A spec is a few dozen lines: these bounds are far above any real one and far below what hurts. The
# depth counts nested mappings/lists; the node count is after alias expansion (a billion-laughs alias
# bomb of under 1 KB expands to 10^9 nodes, which pydantic and the line map would otherwise walk).
MAX_YAML_DEPTH = 64
MAX_YAML_NODES = 100_000


def compose(text: str, source: str) -> yaml.Node | None:
    """The YAML node graph of a spec, refused (SpecError, at once) when nested deeper than MAX_YAML_DEPTH,
    when aliases would expand it beyond MAX_YAML_NODES nodes, or when an alias refers to itself."""
    depth = 0  # the event parser is iterative: this bounds the (recursive) composer before it runs
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise SpecError(
                    f"{source}:{event.start_mark.line + 1}: YAML nested deeper than {MAX_YAML_DEPTH} "
                    "levels; a spec needs a few: flatten it"
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    seen: dict[int, tuple[int, int]] = {}  # id(node) -> (nodes below, incl. itself; height)

    def walk(node: yaml.Node, level: int, stack: set[int]) -> tuple[int, int]:
        key = id(node)
        where = f"{source}:{node.start_mark.line + 1}"
        if key in stack:
            raise SpecError(f"{where}: a YAML alias refers to a node that contains it; remove the alias")
        if key not in seen:
            stack.add(key)
            children: list = []
            if isinstance(node, yaml.MappingNode):
                children = [n for kv in node.value for n in kv]
            elif isinstance(node, yaml.SequenceNode):
                children = node.value
            size, height = 1, 1
            for child in children:
                s, h = walk(child, level + 1, stack)
                size, height = size + s, max(height, h + 1)
            stack.discard(key)
            seen[key] = (size, height)
        size, height = seen[key]
        if level + height > MAX_YAML_DEPTH:
            raise SpecError(
                f"{where}: YAML aliases nest this spec deeper than {MAX_YAML_DEPTH} levels; "
                "write the values out instead of aliasing them"
            )
        if size > MAX_YAML_NODES:
            raise SpecError(
                f"{where}: YAML aliases expand this spec to more than {MAX_YAML_NODES:,} values "
                "(an alias bomb?); write the values out instead of aliasing them"
            )
        return size, height

    if root is not None:
        walk(root, 0, set())
    return root


def line_map(text: str, root: yaml.Node | None = None) -> dict[tuple, int]:
    """Map each key path in a YAML document to its 1-based line (`root`: its already checked nodes)."""
    out: dict[tuple, int] = {}

    def walk(node: yaml.Node, path: tuple) -> None:
        out.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                out[(*path, k.value)] = k.start_mark.line + 1
                walk(v, (*path, k.value))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, (*path, i))

    root = compose(text, "<spec>") if root is None else root
    if root is not None:
        walk(root, ())
    return out


def line_for(loc: tuple, lines: dict[tuple, int]) -> int | None:
    """The line of the deepest prefix of a pydantic loc found in the YAML (skips union tags)."""
    path: tuple = ()
    best = lines.get(())
    for part in loc:
        if (*path, part) in lines:
            path = (*path, part)
            best = lines[path]
    return best
