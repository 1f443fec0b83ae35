"""Train small recurrent models on classic LSTM tasks, export them to checked ONNX.

    python tools/train.py --task adding      # LSTM vs plain RNN, adding problem, T=100
    python tools/train.py --task forecast    # LSTM and GRU, noisy two-periodic signal

Each cell in ``--cells`` is trained the same way (same seed, same batches,
Adam, gradient-norm clipping) until its validation metric reaches
``--target`` or ``--max-steps`` run out, then scored on a fresh test set.
The cells in ``--export`` are exported to ``OUT_DIR/TASK_CELL.onnx`` (opset
17, checked against PyTorch with onnxruntime before writing) with a
``TASK_CELL.json`` metadata file; ``OUT_DIR/TASK_metrics.json`` reports all
cells. Needs torch, onnx, onnxruntime and tqdm; data are generated here.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS; set before CUDA starts
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's lstminfer (for its tasks)

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from export import OPSET, ExportCheckError, export_checked, onnx_metadata  # noqa: E402
from lstminfer import tasks as task_catalog  # noqa: E402
from nets import CELLS, SequenceModel, state_names  # noqa: E402

# Per-task defaults: the bundled models are trained with exactly these.
DEFAULTS = {
    "adding": dict(cells=["lstm", "rnn"], export=["lstm"], seq_len=200, hidden=32, layers=1, batch=64,
                   lr=1e-2, clip=1.0, max_steps=4000, target=0.995, margin=0.02, eval_every=100),
    "forecast": dict(cells=["lstm", "gru"], export=["lstm", "gru"], seq_len=100, hidden=32, layers=1, batch=64,
                     lr=1e-2, clip=1.0, max_steps=2000, target=0.09, margin=0.01, eval_every=100),
}
VALIDATION_SIZE = 1000
TEST_SIZE = 2000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tools/train.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True, choices=sorted(task_catalog.TASKS), help="which task to train on")
    p.add_argument("--cells", nargs="+", choices=sorted(CELLS), help="recurrent cells to train (default: per task)")
    p.add_argument("--export", nargs="*", choices=sorted(CELLS),
                   help="cells to export (default: the task's shipped cells, or all of --cells when given)")
    p.add_argument("--seq-len", type=int, help="sequence length T")
    p.add_argument("--hidden", type=int, help="hidden size")
    p.add_argument("--layers", type=int, help="stacked recurrent layers")
    p.add_argument("--batch", type=int, help="sequences per training step")
    p.add_argument("--lr", type=float, help="Adam learning rate")
    p.add_argument("--clip", type=float, help="gradient-norm clipping threshold")
    p.add_argument("--max-steps", type=int, help="training steps cap per cell")
    p.add_argument("--target", type=float, help="stop early once the validation metric reaches this")
    p.add_argument("--patience", type=int, default=2, help="halve the rate after N evaluations without progress")
    p.add_argument("--margin", type=float, help="documented reproduction margin on the metric")
    p.add_argument("--eval-every", type=int, help="validate every N steps")
    p.add_argument("--seed", type=int, default=0, help="seeds torch and the data generators (default 0)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"], help="auto: CUDA when present")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1: reproducible)")
    p.add_argument("--out-dir", default="runs", help="where models and metrics go (default: runs)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.export is None and args.cells is not None:
        args.export = list(args.cells)
    for key, value in DEFAULTS[args.task].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    unknown = sorted(set(args.export) - set(args.cells))
    if unknown:
        p.error(f"--export {' '.join(unknown)}: not in --cells {' '.join(args.cells)}")
    for key in ("seq_len", "hidden", "layers", "batch", "max_steps", "eval_every"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    return args


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise SystemExit("tools/train.py: --device cuda, but torch sees no CUDA device (use --device auto or cpu)")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(requested)


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()})"


def make_deterministic(seed: int, device: torch.device, threads: int) -> None:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    if device.type == "cpu":
        torch.set_num_threads(threads)


def evaluate(model: SequenceModel, task, data, device) -> dict[str, float]:
    x, target = data
    model.eval()
    with torch.no_grad():
        y = model(torch.from_numpy(x).to(device), *model.initial_state(len(x), device))[0]
    model.train()
    return task.score(task.answer(y).cpu().numpy(), target, x)


def train_cell(cell: str, task, args, device) -> tuple[SequenceModel, dict]:
    """Train one cell; the same seed gives every cell the same batches and validation set."""
    torch.manual_seed(args.seed)
    model = SequenceModel(cell, task.input_size, args.hidden, args.layers).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    # Halve the rate when validation stalls: a high rate finds the solution fast, a low one polishes it.
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max" if task.higher_is_better else "min", factor=0.5, patience=args.patience)
    data_rng = np.random.default_rng([args.seed, 0])
    validation = task.sample(VALIDATION_SIZE, args.seq_len, np.random.default_rng([args.seed, 1]))
    history, losses = [], []
    scores, early_stopped, step = {}, False, 0
    start = time.perf_counter()
    bar = tqdm(range(1, args.max_steps + 1), desc=f"{task.name}/{cell}", disable=args.quiet,
               dynamic_ncols=True, file=sys.stderr)
    for step in bar:
        x, target = task.sample(args.batch, args.seq_len, data_rng)
        x, target = torch.from_numpy(x).to(device), torch.from_numpy(target).to(device)
        y = model(x, *model.initial_state(args.batch, device))[0]
        loss = torch.mean((task.answer(y) - target) ** 2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        losses.append(loss.item())
        if step % args.eval_every == 0 or step == args.max_steps:
            scores = evaluate(model, task, validation, device)
            mean_loss = float(np.mean(losses[-args.eval_every:]))
            history.append({"step": step, "loss": mean_loss, "lr": optimizer.param_groups[0]["lr"], **scores})
            scheduler.step(scores[task.metric])
            bar.set_postfix(loss=f"{mean_loss:.2e}", **{task.metric: f"{scores[task.metric]:.4f}"})
            if task.reached(scores[task.metric], args.target):
                early_stopped = True
                break
    bar.close()
    seconds = time.perf_counter() - start
    test = evaluate(model, task, task.sample(TEST_SIZE, args.seq_len, np.random.default_rng([args.seed, 2])), device)
    result = {
        "cell": cell, "steps": step, "seconds": round(seconds, 1), "early_stopped": early_stopped,
        "reached_target": task.reached(test[task.metric], args.target),
        "parameters": sum(p.numel() for p in model.parameters()),
        "validation_history": history, "test": test, "summary": task.summary(test, args.seq_len),
    }
    return model, result


def metadata_file(name: str, cell: str, task, args, result: dict, onnx_bytes: bytes, diff: float,
                  device: torch.device, command: str) -> dict:
    h_in, h_out = state_names(cell)
    states = {n: f"float32 [{args.layers}, batch, {args.hidden}] initial state (zeros to start)" for n in h_in}
    states_out = {n: f"float32 [{args.layers}, batch, {args.hidden}] final state: feed back as {i} to continue"
                  for n, i in zip(h_out, h_in)}
    return {
        "name": name, "task": task.name, "task_title": task.title, "cell": cell,
        "hidden_size": args.hidden, "num_layers": args.layers, "seq_len": args.seq_len,
        "inputs": {"x": f"float32 [batch, time, {task.input_size}]: {task.x_help}", **states},
        "outputs": {"y": f"float32 [batch, time, 1]: {task.y_help}", **states_out},
        "metric": {
            "name": task.metric, "value": result["test"][task.metric], "all": result["test"],
            "higher_is_better": task.higher_is_better, "description": task.metric_help,
            "summary": result["summary"], "margin": args.margin, "test_sequences": TEST_SIZE,
            "margin_means": "re-scoring on fresh task data, or re-training with `command`, lands within "
                            "value +/- margin",
        },
        "command": command,
        "training": {
            "device": device_label(device), "torch": torch.__version__, "seed": args.seed,
            "steps": result["steps"], "seconds": result["seconds"], "early_stopped": result["early_stopped"],
            "batch": args.batch, "lr": args.lr, "clip": args.clip, "target": args.target,
            "threads": args.threads if device.type == "cpu" else None,
        },
        "export": {
            "file": f"{name}.onnx", "opset": OPSET, "bytes": len(onnx_bytes),
            "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
            "max_abs_diff_torch_vs_onnxruntime": diff,
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    task = task_catalog.get(args.task)
    device = pick_device(args.device)
    make_deterministic(args.seed, device, args.threads)
    command = "python tools/train.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"{task.title}: T={args.seq_len}, cells {', '.join(args.cells)}, device {device_label(device)}")

    report = {"task": task.name, "command": command, "device": device_label(device), "seed": args.seed,
              "metric": task.metric, "target": args.target, "cells": {}}
    for cell in args.cells:
        model, result = train_cell(cell, task, args, device)
        verdict = "reached" if result["reached_target"] else "MISSED"
        print(f"  {cell.upper():4s} {result['summary']}  [{result['steps']} steps, {result['seconds']} s, "
              f"{verdict} target {task.metric} {args.target:g}]")
        if cell in args.export:
            name = f"{task.name}_{cell}"
            try:
                onnx_bytes, diff = export_checked(model, task.input_size, onnx_metadata(task.name, args.seq_len, cell))
            except ExportCheckError as e:
                print(f"tools/train.py: {name}: {e}; nothing written", file=sys.stderr)
                return 1
            meta = metadata_file(name, cell, task, args, result, onnx_bytes, diff, device, command)
            (out_dir / f"{name}.onnx").write_bytes(onnx_bytes)
            (out_dir / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
            result["export"] = meta["export"]
            print(f"       exported {out_dir / (name + '.onnx')} ({len(onnx_bytes) / 1024:.0f} KiB), "
                  f"PyTorch vs onnxruntime max abs diff {diff:.1e}")
        report["cells"][cell] = result
    metrics_path = out_dir / f"{task.name}_metrics.json"
    metrics_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"metrics: {metrics_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
