"""Where one MNIST-MLP training step's time goes on a CUDA device (the pytorch/examples model,
784-400-20, Bernoulli, fused Adam 1e-3, dynamic binarization).

    python benchmarks/gpu_step.py [--data ../shared/data] [--json FILE]

Rows, each at batch 128 and 1024, examples/s as the median of three timed stretches that end
with a synchronize:
  bare                  forward, loss, backward, optimizer.step() on one pre-made batch; no host sync
  bare + guard          the same plus the global gradient norm and ``bool(isfinite(loss + norm))``,
                        the one host sync per step that vaerun's finiteness guard costs
  vaerun                Trainer._step: batch gather, binarization, schedule, guard, accumulators, log
  vaerun, guard w/o sync  the same with the guard's sync left out (the step always taken): its cost
  bare, CUDA graph      the bare step captured once as a CUDA graph and replayed (capturable Adam):
                        the launch-free bound for this model
``enqueue ms`` is the host's time per step before the closing synchronize: where it is close to
the step's time, the step is bound by the host (Python and kernel launches), not by the GPU.
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
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import NEVER, REPO, compose, machine  # noqa: E402


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(step, bs: int, n: int, warmup: int = 20) -> dict:
    for _ in range(warmup):
        step()
    sync()
    rates, enqueue = [], []
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(n):
            step()
        e = time.perf_counter()
        sync()
        t1 = time.perf_counter()
        rates.append(n * bs / (t1 - t))
        enqueue.append((e - t) / n * 1e3)
    return {"examples_per_sec": statistics.median(rates), "ms_per_step": bs / statistics.median(rates) * 1e3,
            "enqueue_ms": statistics.median(enqueue), "runs": rates}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.environ.get("VAERUN_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--json")
    ap.add_argument("--device", default="cuda", help="cpu: a smoke run of this script")
    ap.add_argument("--steps", type=int, default=300)
    a = ap.parse_args()
    import vaerun.loop as loop_module
    from vaerun.loop import Trainer
    from vaerun.objectives import elbo_terms, training_loss
    from vaerun.optim import optimizer_step, zero_grad
    from vaerun.progress import Reporter
    from vaerun.runs import RunFolder
    from vaerun.train import build, total_grad_norm

    mnist = (Path(a.data) / "MNIST" / "raw" / "train-images-idx3-ubyte").exists()
    data = ["dataset=mnist", f"dataset.root={a.data}"] if mnist else ["dataset=shapes"]
    rows = []
    for bs in (128, 1024):
        cfg, resolved = compose([*data, "model=mlp", "model.hidden=[400]", "model.latent_dim=20", f"batch_size={bs}",
                                 f"device={a.device}", "likelihood=bernoulli", "dataset.binarize=dynamic",
                                 "schedule=constant", "optimizer=adam", "progress=log", "tensorboard=false",
                                 "fused_mlp=false",  # the autograd step, as these rows and benchmarks/gpu/ measure
                                 f"max_steps={NEVER}", f"eval_every={NEVER}", f"sample_every={NEVER}",
                                 f"checkpoint_every={NEVER}"])
        n = a.steps
        with tempfile.TemporaryDirectory() as tmp:
            parts = build(cfg)
            model, opt = parts.model, parts.optimizer
            x = parts.data.prepare(parts.data.train.images[:bs])

            def bare():
                loss = training_loss(elbo_terms(model, x), 1.0, 0.0, None)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            def guarded():
                loss = training_loss(elbo_terms(model, x), 1.0, 0.0, None)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if bool(torch.isfinite(loss.detach() + total_grad_norm(model.parameters()))):
                    opt.step()

            trainer = Trainer(cfg, parts, RunFolder(Path(tmp) / "run"), resolved, None)
            trainer.reporter = Reporter(parts.total_steps, False)
            batches = iter(())

            def full():
                nonlocal batches
                xb = next(batches, None)
                if xb is None or xb.shape[0] != bs:
                    batches = iter(parts.data.train_epoch(bs, trainer.rngs.order))
                    xb = next(batches)
                trainer._step(xb)

            def no_sync_step(model, optimizer, x, beta, free_bits, grad_clip, capacity=None, update="all",
                             forward=None, fused=None, need_norm=True, unit_input=False):  # train_step without the sync
                terms = forward(x) if forward is not None else elbo_terms(model, x)
                loss = training_loss(terms, beta, free_bits, capacity)
                zero_grad(optimizer)  # as train_step does it (fused=None: this script pins fused_mlp=false)
                loss.backward()
                grad_norm = total_grad_norm(model.parameters())
                optimizer_step(optimizer)
                return loss.detach(), terms, grad_norm, True

            def full_no_sync():
                with mock.patch.object(loop_module, "train_step", no_sync_step):
                    full()

            for name, fn in (("bare", bare), ("bare + guard", guarded), ("vaerun", full),
                             ("vaerun, guard w/o sync", full_no_sync)):
                rows.append({"batch_size": bs, "case": name, **timed(fn, bs, n)})
                print(f"[gpu_step] {bs:>5} {name:<22} {rows[-1]['examples_per_sec']:>11,.0f} ex/s "
                      f"{rows[-1]['ms_per_step']:.3f} ms/step, enqueue {rows[-1]['enqueue_ms']:.3f} ms", flush=True)
            try:  # the launch-free bound: one captured graph per step
                gmodel = build(cfg).model
                gopt = torch.optim.Adam(gmodel.parameters(), lr=1e-3, fused=True, capturable=True)
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    for _ in range(3):
                        gopt.zero_grad(set_to_none=False)
                        training_loss(elbo_terms(gmodel, x), 1.0, 0.0, None).backward()
                        gopt.step()
                torch.cuda.current_stream().wait_stream(s)
                graph = torch.cuda.CUDAGraph()
                gopt.zero_grad(set_to_none=False)
                with torch.cuda.graph(graph):
                    training_loss(elbo_terms(gmodel, x), 1.0, 0.0, None).backward()
                    gopt.step()
                rows.append({"batch_size": bs, "case": "bare, CUDA graph", **timed(graph.replay, bs, n)})
                print(f"[gpu_step] {bs:>5} {'bare, CUDA graph':<18} {rows[-1]['examples_per_sec']:>11,.0f} ex/s "
                      f"{rows[-1]['ms_per_step']:.3f} ms/step, enqueue {rows[-1]['enqueue_ms']:.3f} ms", flush=True)
            except Exception as err:  # report, keep the other rows
                rows.append({"batch_size": bs, "case": "bare, CUDA graph", "error": f"{type(err).__name__}: {err}"[:300]})
                print("[gpu_step] CUDA graph failed:", rows[-1]["error"], flush=True)
    m = machine()
    print(f"\none MNIST-MLP training step · {m['gpu']} · torch {m['torch']} · {'MNIST' if mnist else 'shapes'}")
    print("| batch | step | examples/s | ms/step | host enqueue ms/step |\n|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['batch_size']} | {r['case']} | failed | | {r['error'][:60]} |")
        else:
            print(f"| {r['batch_size']} | {r['case']} | {r['examples_per_sec']:,.0f} | {r['ms_per_step']:.3f} | "
                  f"{r['enqueue_ms']:.3f} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": m, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
