"""Training throughput of the MLP, conv and autoregressive models in each arithmetic: float32,
bfloat16 autocast (precision=bf16), torch.compile (compile=true), both, and on CUDA the compiled
step replayed as CUDA graphs (compile_mode=reduce_overhead, alone and with bf16). One table.

    python benchmarks/train_speed.py [--device cuda] [--data ../shared/data] [--quick] [--json FILE]

Each cell: vaerun's full training step (Trainer._step: batch gather, binarization, schedule,
finiteness guard, metric accumulation, logging) over consecutive batches of MNIST (or of
`shapes` when MNIST is not under --data), after warm-up steps that include any compilation
(reported separately). Examples/s is the median of three timed stretches; on CUDA each stretch
ends with a synchronize, so the figure is the device's, not the launch queue's. Variants are run
one after another in this process, so compare cells of one table, not across machines.
benchmarks/gpu_check.sh runs this on a GPU; CPU runs work too (slower, and bf16 only helps on
CPUs with bf16 instructions).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import NEVER, REPO, compose, machine  # noqa: E402

MODELS = {
    "mlp": (["model=mlp", "model.hidden=[400]", "model.latent_dim=20"], 128),
    "conv": (["model=conv"], 128),
    "autoregressive": (["model=autoregressive", "model.ar_layers=8", "model.ar_kernel=5", "model.ar_width=32",
                        "model.ar_cond_channels=16", "model.latent_dim=16", "model.ar_cond=global"], 64),
}
VARIANTS = {"fp32": [], "autograd": ["fused_mlp=false"],  # the MLP's autograd step (fp32 uses its written-out pass)
            "bf16": ["precision=bf16"], "autograd+bf16": ["fused_mlp=false", "precision=bf16"],
            "compile": ["compile=true"],
            "compile+bf16": ["compile=true", "precision=bf16"],
            # CUDA graphs (torch.compile's reduce-overhead mode): on a CPU the same as "compile"
            "graphs": ["compile=true", "compile_mode=reduce_overhead"],
            "graphs+bf16": ["compile=true", "compile_mode=reduce_overhead", "precision=bf16"]}
CPU_VARIANTS = ["fp32", "autograd", "bf16", "compile", "compile+bf16"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(model: str, variant: str, device: str, data: list[str], steps: int, warmup: int) -> dict:
    from vaerun.loop import Trainer
    from vaerun.progress import Reporter
    from vaerun.runs import RunFolder
    from vaerun.train import build

    extra, bs = MODELS[model]
    cfg, resolved = compose([*data, *extra, *VARIANTS[variant], f"batch_size={bs}", f"device={device}",
                             "likelihood=bernoulli", "dataset.binarize=dynamic", "schedule=constant",
                             "optimizer=adam", "progress=log", "tensorboard=false", f"max_steps={NEVER}",
                             f"eval_every={NEVER}", f"sample_every={NEVER}", f"checkpoint_every={NEVER}"])
    with tempfile.TemporaryDirectory() as tmp:
        parts = build(cfg)
        trainer = Trainer(cfg, parts, RunFolder(Path(tmp) / "run"), resolved, None)
        trainer.reporter = Reporter(parts.total_steps, False)
        batches = iter(())

        def run(k: int) -> float:
            nonlocal batches
            sync(parts.device)
            t = time.perf_counter()
            for _ in range(k):
                xb = next(batches, None)
                if xb is None or xb.shape[0] != bs:  # whole batches only: one compiled shape
                    batches = iter(parts.data.train_epoch(bs, trainer.rngs.order))
                    xb = next(batches)
                trainer._step(xb)
            sync(parts.device)
            return time.perf_counter() - t

        first = run(warmup)
        rates = [steps * bs / run(steps) for _ in range(3)]
    return {"model": model, "variant": variant, "examples_per_sec": statistics.median(rates), "runs": rates,
            "warmup_s": first, "warmup_steps": warmup, "batch_size": bs, "steps": steps,
            "device": str(parts.device), "dataset": cfg.dataset.name.value}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--data", default=os.environ.get("VAERUN_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--variants", help="default: all on CUDA; on a CPU all but the CUDA-graph ones")
    ap.add_argument("--quick", action="store_true", help="a few steps per cell (a smoke run)")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    mnist = (Path(a.data) / "MNIST" / "raw" / "train-images-idx3-ubyte").exists()
    data = ["dataset=mnist", f"dataset.root={a.data}", "dataset.subset=8192"] if mnist else \
        ["dataset=shapes", "dataset.num_examples=8192"]
    gpu = a.device == "cuda"
    models = a.models.split(",")
    variants = a.variants.split(",") if a.variants else list(VARIANTS) if gpu else CPU_VARIANTS
    for kind, asked, known in (("model", models, MODELS), ("variant", variants, VARIANTS)):
        bad = [v for v in asked if v not in known]
        if bad:
            print(f"train_speed: unknown {kind} {', '.join(map(repr, bad))}; choose from {', '.join(known)}",
                  file=sys.stderr)
            return 2
    results = []
    m = machine()

    def cell_order(r: dict) -> tuple[int, int]:  # the table's order: model-major
        return models.index(r["model"]), variants.index(r["variant"])
    # variant-major: every model's float32 and bf16 cells come before the (slow to warm up) compiled ones,
    # and the JSON is rewritten after each cell, so a run stopped at its time limit keeps what it measured
    for variant in variants:
        for model in models:
            if variant.startswith("autograd") and model != "mlp":  # fused_mlp only changes the MLP's step
                continue
            steps = {"mlp": 400, "conv": 200, "autoregressive": 100}[model] if gpu else \
                {"mlp": 100, "conv": 20, "autoregressive": 4}[model]
            if a.quick:
                steps = max(2, steps // 10)
            warmup = 10 if gpu or model == "mlp" else 3
            t = time.time()
            torch._dynamo.reset()  # each cell compiles afresh (one process would otherwise hit dynamo's recompile limit)
            try:
                r = measure(model, variant, a.device, data, steps, warmup)
            except Exception as err:  # a variant this device/torch cannot run: say so, keep going
                r = {"model": model, "variant": variant, "error": f"{type(err).__name__}: {err}"[:300]}
            r["cell_s"] = time.time() - t
            results.append(r)
            print(f"[train_speed] {model:>14} {variant:>12}: " + (
                f"{r['examples_per_sec']:>10,.0f} ex/s (warm-up {r['warmup_s']:.1f}s)" if "error" not in r
                else r["error"]), flush=True)
            if a.json:
                Path(a.json).write_text(json.dumps({"machine": m, "device": a.device,
                                                    "results": sorted(results, key=cell_order)},
                                                   indent=2) + "\n")
    base = {r["model"]: r.get("examples_per_sec") for r in results if r["variant"] == "fp32"}
    results.sort(key=cell_order)
    print(f"\nvaerun training throughput · {m['gpu'] or m['cpu']} · torch {m['torch']} · device {a.device} · "
          f"{'MNIST' if mnist else 'shapes'} · dynamic binarization, Adam (fused), full vaerun step")
    print(f"| {'model':<14} | {'variant':<12} | {'batch':>5} | {'examples/s':>11} | {'vs fp32':>7} | "
          f"{'warm-up (incl. compile)':>23} |")
    print(f"|{'-' * 16}|{'-' * 14}|{'-' * 7}|{'-' * 13}|{'-' * 9}|{'-' * 25}|")
    for r in results:
        if "error" in r:
            print(f"| {r['model']:<14} | {r['variant']:<12} | {'':>5} | {'failed':>11} | {'':>7} | {'':>23} |  "
                  f"{r['error'][:80]}")
            continue
        ratio = r["examples_per_sec"] / base[r["model"]] if base.get(r["model"]) else float("nan")
        print(f"| {r['model']:<14} | {r['variant']:<12} | {r['batch_size']:>5} | {r['examples_per_sec']:>11,.0f} | "
              f"{ratio:>6.2f}x | {r['warmup_s']:>20.1f} s |")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
