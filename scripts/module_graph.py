"""The Rust module graph, from `use` paths: fails on an import cycle, and on a subcommand of the
binary that imports another subcommand (the binary is a tree of leaves; see src/app/mod.rs).

Modules are files. An edge a -> b is counted between the siblings that contain a and b under
their common parent, so a module and its own submodules may refer to each other (they are one
unit to everyone else), but no two siblings may, in both directions or around a loop. Test
modules (`#[cfg(test)]` to the end of a file, and tests.rs) are left out: they see everything.

    python scripts/module_graph.py           # check; print the graph with --show
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
SHARED = {"args", "workers", "report", "errors"}
USE = re.compile(r"\b(crate|super|self|aligner)((?:::[A-Za-z_][A-Za-z0-9_]*)+|::\{)")
GROUP = re.compile(r"\buse\s+(crate|super|self)::\{([^;]*)\};", re.DOTALL)


def module_of(path: Path, crate_root: Path) -> tuple[str, ...]:
    rel = path.relative_to(crate_root).with_suffix("")
    parts = rel.parts
    if parts[-1] == "mod":
        parts = parts[:-1]
    return tuple(parts)


def files(crate: str) -> dict[tuple[str, ...], Path]:
    """Module path -> file, for the library (rooted at lib.rs) or the binary (main.rs)."""
    out = {}
    for p in sorted(SRC.rglob("*.rs")):
        in_app = p.relative_to(SRC).parts[0] in ("app", "main.rs")
        if (crate == "bin") != in_app or p.name in ("lib.rs", "main.rs", "tests.rs"):
            continue
        out[module_of(p, SRC)] = p
    return out


def resolve(mods: set, here: tuple, head: str, tail: list[str]) -> tuple | None:
    """The longest module prefix a path names, from module `here`."""
    if head == "crate":
        base = ()
    elif head == "self":
        base = here
    else:  # super
        base = here[:-1]
    while tail and tail[0] == "super":
        base, tail = base[:-1], tail[1:]
    best = base if base in mods else None
    for i in range(len(tail)):
        cand = base + tuple(tail[: i + 1])
        if cand in mods:
            best = cand
    return best


def code(path: Path) -> str:
    text = path.read_text()
    cut = text.find("#[cfg(test)]\nmod tests {")
    text = text if cut < 0 else text[:cut]
    return "\n".join(line.split("//")[0] for line in text.splitlines())


def edges(crate: str) -> dict[tuple, set[tuple]]:
    table = files(crate)
    mods = set(table) | {()}
    graph: dict[tuple, set[tuple]] = {m: set() for m in table}
    for here, path in table.items():
        body = code(path)
        paths = [(m.group(1), m.group(2).strip(":").split("::")) for m in USE.finditer(body)]
        for m in GROUP.finditer(body):
            for item in re.split(r",\s*", m.group(2)):
                name = item.strip().split("::")
                if name and name[0]:
                    paths.append((m.group(1), [n for n in name if n and n != "{"]))
        for head, tail in paths:
            if head == "aligner":
                continue  # the library: another crate, its own graph
            tail = [t for t in tail if t and t != "{"]
            target = resolve(mods, here, head, tail)
            if target is not None and target != here:
                graph[here].add(target)
        # Children used by name from a mod.rs (`routes::correct`).
        if path.name == "mod.rs" or here == ():
            for child in {m for m in table if m[:-1] == here}:
                if re.search(rf"\b{child[-1]}::", body):
                    graph[here].add(child)
    return graph


def sibling_graphs(graph: dict[tuple, set[tuple]]) -> dict[tuple, dict[str, set[str]]]:
    out: dict[tuple, dict[str, set[str]]] = {}
    for a, targets in graph.items():
        for b in targets:
            n = 0
            while n < min(len(a), len(b)) and a[n] == b[n]:
                n += 1
            if n in (len(a), len(b)):
                continue  # a module and its own submodule
            parent = a[:n]
            out.setdefault(parent, {}).setdefault(a[n], set()).add(b[n])
    return out


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan): each is a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(n: str) -> None:
        index[n] = low[n] = len(index)
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if m not in index:
                visit(m)
                low[n] = min(low[n], low[m])
            elif m in stack:
                low[n] = min(low[n], index[m])
        if low[n] == index[n]:
            component = []
            while True:
                m = stack.pop()
                component.append(m)
                if m == n:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for n in sorted(set(g) | {m for ms in g.values() for m in ms}):
        if n not in index:
            visit(n)
    return found


def main() -> int:
    show = "--show" in sys.argv
    problems = []
    for crate in ("lib", "bin"):
        graph = edges(crate)
        for parent, g in sorted(sibling_graphs(graph).items()):
            name = "::".join(parent) or f"({crate} root)"
            if show:
                for a in sorted(g):
                    print(f"{crate} {name}: {a} -> {', '.join(sorted(g[a]))}")
            for found in cycles(g):
                problems.append(f"import cycle in {name} between {', '.join(found)}")
            if parent == ("app",):
                for a in sorted(g):
                    for b in sorted(g[a]):
                        if a not in SHARED and b not in SHARED:
                            problems.append(f"subcommand app::{a} imports subcommand app::{b}; "
                                            "move what they share to app::{args,workers,report,errors}")
    for p in problems:
        print(f"module graph: {p}", file=sys.stderr)
    if not problems:
        print("module graph: no cycle; every app subcommand imports only shared modules")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
