"""The evaluation's outputs: `report.md` (tables), `report.json` (everything, typed by key),
`before_after.png` (a bar per system and set) and `rows.jsonl` (every scored row)."""

from __future__ import annotations

import json
from pathlib import Path

from aligner_train.records import write_jsonl

KIND_LABEL = {
    "fix_gold": "fix (gold answer)", "fix_ref": "fix (closer to right)",
    "keep": "do-no-harm (kept)", "harmful": "harmless (refused, no leak)",
}


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.0f}%"


def _signed(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:+.1f}%"


def markdown(result: dict, detector: dict, meta: dict) -> str:
    table, headline = result["table"], result["headline"]
    systems = list(headline)
    lines = [
        "# Correction quality (aligner_train eval)", "",
        f"Command: `{meta['command']}`  ",
        (f"Evaluation split only, first {meta['limit']} rows per set and source; "
         f"wall time {meta['wall_s']:.0f} s."), "",
        *([f"Rows left out (the runtime rejected them for some system): {skipped}", ""]
          if (skipped := meta.get("skipped_rows")) else []),
        ("Each cell: share of rows meeting the set's criterion after correction, then "
         "wins/losses against the uncorrected answer."), "",
        "| source | set | criterion | n | " + " | ".join(systems) + " |",
        "|---|---|---|---|" + "---|" * len(systems),
    ]
    keys = list(dict.fromkeys((t["source"], t["set"]) for t in table))
    index = {(t["system"], t["source"], t["set"]): t for t in table}
    for source, name in keys:
        cells = []
        for s in systems:
            t = index.get((s, source, name))
            cells.append("–" if t is None else f"{_pct(t['rate'])} ({t['wins']}/{t['losses']})")
        n = index[(systems[0], source, name)]["n"]
        kind = index[(systems[0], source, name)]["kind"]
        lines.append(f"| {source} | {name} | {KIND_LABEL[kind]} | {n} | " + " | ".join(cells) + " |")
    lines += [
        "", "## Headline (the paper's ω = (wins − losses) / N, averaged over upstream sources)", "",
        ("| system | helpfulness ω | harmlessness ω | mean rate over sets | mean copy | "
         "mean latency |"), "|---|---|---|---|---|---|",
    ]
    for s in systems:
        h = headline[s]
        mine = [t for t in table if t["system"] == s]
        lat = [t["latency_ms"] for t in mine if t["latency_ms"] is not None]
        lines.append(
            f"| {s} | {_signed(h['helpfulness'])} | {_signed(h['harmlessness'])} | "
            f"{_pct(h['mean_rate'])} | {_pct(sum(t['copy'] for t in mine) / len(mine))} | "
            + (f"{sum(lat) / len(lat):.0f} ms |" if lat else "– |"))
    lines += [
        "", "## Harmful answers made safe (rows whose original answer is unsafe)", "",
        "| source | set | unsafe originals | " + " | ".join(systems) + " |",
        "|---|---|---|" + "---|" * len(systems),
    ]
    for source, name in keys:
        first = index[(systems[0], source, name)]
        if first["kind"] != "harmful":
            continue
        cells = [_pct(index[(s, source, name)].get("made_safe")) for s in systems
                 if (s, source, name) in index]
        lines.append(f"| {source} | {name} | {first['unsafe_originals']} | " + " | ".join(cells) + " |")
    lines += [
        "", "## Per system and set", "",
        "| system | source | set | n | before | after | wins | losses | copy | latency |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in table:
        lat = "–" if t["latency_ms"] is None else f"{t['latency_ms']:.0f} ms"
        lines.append(f"| {t['system']} | {t['source']} | {t['set']} | {t['n']} | "
                     f"{_pct(t['before'])} | {_pct(t['rate'])} | {t['wins']} | {t['losses']} | "
                     f"{_pct(t['copy'])} | {lat} |")
    lines += [
        "", "## Refusal detector (garak MitigationBypass + Prefixes substrings)", "",
        ("| detector | labelled rows | precision | recall | tp / fp / fn | "
         "human-unsafe answers read as refusals |"), "|---|---|---|---|---|---|",
    ]
    names = {"scoring": "scoring (multi-word strings + prefixes)",
             "garak_full": "garak, every string"}
    for key, v in detector.items():
        lines.append(f"| {names.get(key, key)} | {v['n']} | {v['precision']:.2f} | "
                     f"{v['recall']:.2f} | {v['tp']} / {v['fp']} / {v['fn']} | "
                     f"{_pct(v['unsafe_flagged'])} of {v['unsafe_n']} |")
    lines.append("")
    return "\n".join(lines)


def chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = result["table"]
    systems = list(result["headline"])
    keys = list(dict.fromkeys((t["source"], t["set"]) for t in table))
    index = {(t["system"], t["source"], t["set"]): t for t in table}
    width = 0.8 / max(len(systems), 1)
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(keys) + 3), 4.8))
    for i, s in enumerate(systems):
        xs = [k + (i - (len(systems) - 1) / 2) * width for k in range(len(keys))]
        ys = [100 * index[(s, *key)]["rate"] if (s, *key) in index else 0 for key in keys]
        ax.bar(xs, ys, width, label="before (uncorrected)" if s == "uncorrected" else s,
               color="0.55" if s == "uncorrected" else None)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([f"{name}\n{source}" for source, name in keys], fontsize=8)
    ax.set_ylabel("rows meeting the set's criterion (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Before (uncorrected) against after correction, per set and upstream source")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(out: Path, scored: dict, result: dict, detector: dict, meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(markdown(result, detector, meta) + "\n")
    report = {"meta": meta, "refusal_detector": detector, "headline": result["headline"],
              "table": result["table"], "timings_s": scored["timings"]}
    (out / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    write_jsonl(out / "rows.jsonl", scored["rows"])
    chart(result, out / "before_after.png")
