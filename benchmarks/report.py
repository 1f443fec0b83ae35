"""Turn a pytest-benchmark JSON file into a Markdown table (and a PNG plot).

    python benchmarks/report.py bench.json [--out benchmarks/results.md] [--png benchmarks/results.png]

One row per case (op, H, config), one column per peer: median time, and the
ratio onnxruntime-1-thread time / peer time (> 1: faster than the baseline);
then GFLOP/s = 2*G*H*(I+H)*T*B / median. Cold-start rows show seconds.
The plot needs matplotlib, which lstminfer does not depend on: without it
the PNG is skipped with a message.

Whole-model rows (``test_bench_whole_model.py``, tagged with ``model`` and
``row``) get their own table: model x row, lstminfer and onnxruntime-1-thread
median in µs, and the ratio onnxruntime / lstminfer (> 1: lstminfer faster).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

BASELINE = "ort-1t"
CONFIG_ORDER = {"stream": 0, "seq": 1, "batch": 2}


def load_results(path: str) -> dict[tuple, dict[str, dict]]:
    """{(op, hidden, config): {peer: {"median": s, "flops": n}}}"""
    with open(path) as f:
        data = json.load(f)
    cases: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for bench in data.get("benchmarks", []):
        info = bench.get("extra_info", {})
        if "peer" not in info or "model" in info:  # whole-model rows: load_whole_models
            continue
        key = (info["op"], info["hidden"], info["config"])
        cases[key][info["peer"]] = {"median": bench["stats"]["median"], "flops": info.get("flops", 0)}
    return cases


def load_whole_models(path: str) -> dict[tuple[str, str], dict[str, dict]]:
    """{(model, row): {peer: {"median": s, "T": n, "B": n}}} for the whole-model benchmarks."""
    with open(path) as f:
        data = json.load(f)
    rows: dict[tuple[str, str], dict[str, dict]] = defaultdict(dict)
    for bench in data.get("benchmarks", []):
        info = bench.get("extra_info", {})
        if "model" not in info or "peer" not in info:
            continue
        rows[(info["model"], info["row"])][info["peer"]] = {
            "median": bench["stats"]["median"], "T": info.get("T"), "B": info.get("B")}
    return rows


WHOLE_ROW_ORDER = {"stream": 0, "run": 1, "named": 2, "pool": 3, "seq": 4, "batch": 5}
WHOLE_ROW_WHAT = {"stream": "Stream.step", "run": "Model.run, state fed back",
                  "named": "Model.run, state fed back, names from get_inputs()/get_outputs() each call",
                  "pool": "StreamPool.step, 64 streams",
                  "seq": "Model.run", "batch": "Model.run"}


def whole_model_markdown(rows: dict[tuple[str, str], dict[str, dict]]) -> str:
    models = list(dict.fromkeys(model for model, _ in rows))  # in the order they ran
    lines = [
        f"Whole models: median time per call, lstminfer vs {BASELINE} in the same run; "
        f"ratio = {BASELINE} / lstminfer (higher: lstminfer faster); the last column compares two threads "
        "each (lstminfer threads=2 against onnxruntime's intra_op_num_threads=2).",
        "",
        f"| model | row | T×B | lstminfer call | lstminfer µs | {BASELINE} µs | ratio | threads=2 µs | ratio "
        "| ort-2t µs | 2t / 2t |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key in sorted(rows, key=lambda k: (models.index(k[0]), WHOLE_ROW_ORDER.get(k[1], 9))):
        model, row = key
        peers = rows[key]
        ours, base = peers.get("lstminfer", {}).get("median"), peers.get(BASELINE, {}).get("median")
        two = peers.get("lstminfer-2t", {}).get("median")
        base_two = peers.get("ort-2t", {}).get("median")
        any_peer = next(iter(peers.values()))
        shape = f"{any_peer['T']}×{any_peer['B']}" if any_peer.get("T") is not None else "—"
        lines.append(f"| {model} | {row} | {shape} | {WHOLE_ROW_WHAT.get(row, '')} | {_us(ours)} | {_us(base)} | "
                     f"{_ratio(base, ours)} | {_us(two)} | {_ratio(base, two)} | "
                     f"{_us(base_two)} | {_ratio(base_two, two)} |")
    return "\n".join(lines) + "\n"


def _ratio(base: float | None, ours: float | None) -> str:
    return f"{base / ours:.2f}x" if ours and base else "—"


def _us(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1e6:,.1f}"


def _sort_key(key):
    op, hidden, config = key
    return (config.startswith("cold"), op, CONFIG_ORDER.get(config, 9), hidden)


def _time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def markdown(cases: dict[tuple, dict[str, dict]]) -> str:
    peers = sorted({p for row in cases.values() for p in row}, key=lambda p: (p != BASELINE, p))
    lines = [
        f"Median time per call; in brackets: {BASELINE} time / this time (higher is faster). "
        "GFLOP/s of lstminfer-numba = 2·G·H·(I+H)·T·B / median.",
        "",
        "| case | " + " | ".join(peers) + " | numba GFLOP/s |",
        "|---|" + "---|" * (len(peers) + 1),
    ]
    for key in sorted(cases, key=_sort_key):
        row = cases[key]
        base = row.get(BASELINE, {}).get("median")
        cells = []
        for peer in peers:
            if peer not in row:
                cells.append("—")
                continue
            median = row[peer]["median"]
            ratio = f" ({base / median:.2f}x)" if base and peer != BASELINE else ""
            cells.append(_time(median) + ratio)
        numba = row.get("lstminfer-numba")
        gflops = f"{numba['flops'] / numba['median'] / 1e9:.1f}" if numba and numba["flops"] else "—"
        op, hidden, config = key
        lines.append(f"| {op} H={hidden} {config} | " + " | ".join(cells) + f" | {gflops} |")
    return "\n".join(lines) + "\n"


def plot(cases: dict[tuple, dict[str, dict]], path: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the plot (pip install matplotlib to get it)", file=sys.stderr)
        return False
    keys = [k for k in sorted(cases, key=_sort_key) if not k[2].startswith("cold") and BASELINE in cases[k]]
    peers = sorted({p for k in keys for p in cases[k] if p != BASELINE})
    fig, ax = plt.subplots(figsize=(max(8, len(keys) * 0.45), 4.5))
    width = 0.8 / max(1, len(peers))
    for i, peer in enumerate(peers):
        ratios = [cases[k][BASELINE]["median"] / cases[k][peer]["median"] if peer in cases[k] else 0 for k in keys]
        ax.bar([x + i * width for x in range(len(keys))], ratios, width, label=peer)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(keys))])
    ax.set_xticklabels([f"{op} {h} {c}" for op, h, c in keys], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(f"speed vs {BASELINE} (x)")
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter
    ratio_label = FuncFormatter(lambda v, _: f"{v:g}x")
    ax.yaxis.set_major_formatter(ratio_label)
    ax.yaxis.set_minor_formatter(ratio_label)
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="file written by pytest --benchmark-json")
    parser.add_argument("--out", help="write the Markdown table here (default: stdout)")
    parser.add_argument("--png", help="write the plot here (needs matplotlib)")
    args = parser.parse_args(argv)
    cases = load_results(args.json)
    whole = load_whole_models(args.json)
    if not cases and not whole:
        print(f"{args.json}: no lstminfer benchmarks found", file=sys.stderr)
        return 1
    tables = ([markdown(cases)] if cases else []) + ([whole_model_markdown(whole)] if whole else [])
    table = "\n".join(tables)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table)
    else:
        print(table)
    if args.png and cases and plot(cases, args.png):
        print(f"wrote {args.png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
