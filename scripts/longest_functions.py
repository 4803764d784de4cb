"""The longest Rust functions under a source folder (test modules left out), by lines from
`fn` to its closing brace. String and char literals are blanked first so that braces inside
them do not count.

    python scripts/longest_functions.py src [N]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

FN = re.compile(r"\s*(pub(\([^)]*\))?\s+)?(async\s+)?(unsafe\s+)?(extern\s+\"C\"\s+)?fn\s+(\w+)")


def blank_literals(text: str) -> str:
    keep_lines = lambda m: '"' + "\n" * m.group(0).count("\n") + '"'
    text = re.sub(r'r#"(?:.|\n)*?"#', keep_lines, text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', keep_lines, text, flags=re.DOTALL)
    return re.sub(r"'(?:\\.|[^'\\])'", "' '", text)


def functions(path: Path) -> list[tuple[int, str]]:
    lines = blank_literals(path.read_text()).splitlines()
    end = next((i for i, line in enumerate(lines) if line.startswith("#[cfg(test)]")
                and i + 1 < len(lines) and lines[i + 1].startswith("mod tests")), len(lines))
    found = []
    for i in range(end):
        m = FN.match(lines[i])
        if not m:
            continue
        depth, started, j = 0, False, i
        while j < len(lines):
            depth += lines[j].count("{") - lines[j].count("}")
            started = started or "{" in lines[j]
            if (started and depth <= 0) or (not started and lines[j].rstrip().endswith(";")):
                break
            j += 1
        if started:
            found.append((j - i + 1, m.group(6)))
    return found


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path("src")
    n = int(argv[1]) if len(argv) > 1 else 5
    rows = [(length, str(p.relative_to(root)), name) for p in root.rglob("*.rs") for length, name in functions(p)]
    for length, file, name in sorted(rows, reverse=True)[:n]:
        print(f"{length:5d}  {file}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
