"""One-shot GPU check (CI has no GPU): vaerun's CUDA paths against their references, with timings.

Sections (--only): graphs (CUDA graphs against eager on one seed), fused (the MLP's written-out
pass against autograd on one seed), pixelcnn (the autoregressive decoder's band convolutions, cone
and evaluation pieces against their references, with timings), layout (conv weights NCHW against
channels-last, timings), default (the default experiment, then eval and diagnose on its run),
variants (every model, Gaussian likelihoods), resume (SIGINT, then resume, against an
uninterrupted run).

    python3 benchmarks/gpu_check.py                # prints a report; exit 1 when a check fails
    GPU_CHECK_DEVICE=cpu python3 benchmarks/gpu_check.py --only fused,pixelcnn   # a smoke run on a CPU
"""
from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

VAERUN = [sys.executable, "-m", "vaerun.cli"]
OUT = Path(os.environ.get("GPU_CHECK_DIR", "/tmp/gpu_check"))
DEVICE = os.environ.get("GPU_CHECK_DEVICE", "cuda")  # cpu: a smoke run of the script itself
FAULT = ["dataset.num_examples=1000", "dataset.val_size=100", "batch_size=32", "max_steps=600", "log_every=7",
         "eval_every=100", "checkpoint_every=13", "sample_every=300", "model.hidden=[256,256]", "model.latent_dim=4",
         "progress=log", "schedule=cyclical", "dataset.binarize=dynamic", "device=cuda", "tensorboard=false"]
failures = []


def run(*args, timeout=600) -> subprocess.CompletedProcess:
    t = time.time()
    out = subprocess.run([*VAERUN, *args], capture_output=True, text=True, timeout=timeout)
    print(f"$ vaerun {' '.join(args)}  ->  rc={out.returncode} in {time.time() - t:.1f}s")
    return out


def check(ok: bool, what: str) -> None:
    print(("PASS " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def summary_of(folder: Path) -> tuple[Path, dict]:
    p = next(folder.rglob("summary.json"))
    return p.parent, json.loads(p.read_text())


def records(run_dir: Path) -> list[dict]:
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["split"] in ("train", "val"):
            out.append({k: v for k, v in r.items() if k not in ("time", "examples_per_sec")})
    return out


def default_experiment() -> None:
    """The default experiment (device=auto must pick CUDA), then eval (importance weighted) and
    diagnose on its run folder."""
    out = run("train", f"out_dir={OUT}/default", "progress=log")
    print("\n".join(l for l in out.stdout.splitlines() if "val @" in l or "done" in l or "diagnosis" in l)[-1500:])
    d, s = summary_of(OUT / "default")
    check(out.returncode == 0 and s["status"] == "completed" and s["device"].startswith("cuda"),
          f"default experiment on {s.get('device')}: {s.get('wall_time_s')} s, "
          f"{s.get('examples_per_sec') or 0:.0f} ex/s, val elbo {s['final_val']['elbo']:.2f}")
    out = run("eval", str(d), "--iw-samples", "1000", "--split", "test")
    check(out.returncode == 0 and "nll_iw" in out.stdout, "vaerun eval --iw-samples 1000 on CUDA")
    print(out.stdout[-1200:])
    out = run("diagnose", str(d))
    check(out.returncode == 0, "vaerun diagnose on CUDA")


def variants() -> None:
    """Every model (and the likelihoods) on CUDA, a few hundred steps."""
    for i, extra in enumerate((["model=conv"], ["model=conv", "likelihood=gaussian", "likelihood.learn_sigma=pixel"],
                               ["likelihood=gaussian", "likelihood.learn_sigma=channel", "dataset.binarize=dynamic"],
                               ["model=autoregressive"])):  # evaluation in pieces, sample grids through the cone
        out = run("train", *extra, "max_steps=300", "eval_every=150", f"out_dir={OUT}/variant{i}")
        if out.returncode:
            print(out.stdout[-2000:], out.stderr[-2000:])
        _, s = summary_of(OUT / f"variant{i}")
        check(out.returncode == 0 and s["status"] == "completed",
              f"{' '.join(extra)}: {s.get('examples_per_sec') or 0:.0f} ex/s, elbo {s['final_val']['elbo']:.2f}")


# two short runs on one seed, compared record by record: a linear β warm-up, free bits, dynamic
# binarization and a smaller last batch (1,000 training images, batch 96)
SAME_SEED = ["dataset.num_examples=1100", "dataset.val_size=100", "batch_size=96", "max_steps=60", "log_every=1",
             "eval_every=30", "sample_every=1000", "checkpoint_every=1000", f"device={DEVICE}", "tensorboard=false",
             "dataset.binarize=dynamic", "schedule=linear", "schedule.warmup_steps=20", "free_bits=0.05",
             "progress=log", "pictures.latents=false", "pictures.traverse=false"]


def same_seed_runs(*settings: tuple[str, list[str]]) -> list[list[dict]]:
    """SAME_SEED trained once per (name, overrides); each run's train and val records."""
    out = []
    for name, extra in settings:
        res = run("train", *SAME_SEED, *extra, f"out_dir={OUT}/{name}")
        if res.returncode:
            print(res.stdout[-2000:], res.stderr[-2000:])
        folder, s = summary_of(OUT / name)
        check(res.returncode == 0 and s["status"] == "completed", f"{name} run: {s.get('status')}")
        out.append(records(folder))
    return out


def relative_differences(a: list[dict], b: list[dict], train_only: bool) -> list[float]:
    return [abs(x[k] - y[k]) / max(abs(x[k]), 1e-3) for x, y in zip(a, b) for k in ("loss", "recon", "kl")
            if k in x and (x["split"] == "train" or not train_only)]


def sync() -> None:
    """Waits for the device, so that a timed stretch ends when its work does."""
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def training_rate(model, optimizer, x, steps: int, bf16: bool = False) -> float:
    """Examples/s of plain training steps on one batch: the ELBO at β = 1 (under bf16 autocast when
    ``bf16``), backward, the optimizer step."""
    import torch

    from vaerun.objectives import elbo_terms
    from vaerun.optim import optimizer_step, zero_grad

    sync()
    t = time.perf_counter()
    for _ in range(steps):
        zero_grad(optimizer)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            terms = elbo_terms(model, x)
        (terms.recon + terms.kl_per_dim.sum(1)).mean().backward()
        optimizer_step(optimizer)
    sync()
    return steps * x.shape[0] / (time.perf_counter() - t)


def graphs_follow_eager() -> None:
    """compile_mode=reduce_overhead (the compiled step replayed as CUDA graphs) trains the same
    trajectory as eager float32 on the same seed, to rounding, across a smaller last batch."""
    a, b = same_seed_runs(("eager", []), ("graphs", ["compile=true", "compile_mode=reduce_overhead"]))
    rel = relative_differences(a, b, train_only=True)
    first = rel[:3 * 20]
    print(f"graphs vs eager: {len(b)} vs {len(a)} records; largest relative difference over the first 20 steps "
          f"{max(first):.2e}, over all {len(rel) // 3} steps {max(rel):.2e}")
    check(len(a) == len(b) and max(first) < 1e-3 and max(rel) < 2e-2,
          "compile_mode=reduce_overhead follows the eager trajectory on CUDA")


def resume_after_sigint() -> None:
    """SIGINT then resume on CUDA, against an uninterrupted run."""
    run("train", *FAULT, f"out_dir={OUT}/ref")
    ref_dir, _ = summary_of(OUT / "ref")
    proc = subprocess.Popen([*VAERUN, "train", *FAULT, f"out_dir={OUT}/int"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    while True:
        m = list((OUT / "int").rglob("metrics.jsonl"))
        if m and any(json.loads(l)["step"] >= 250 for l in m[0].read_text().splitlines() if '"train"' in l):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=120)
    int_dir, s = summary_of(OUT / "int")
    check(rc == 130 and s["status"] == "interrupted", f"SIGINT on CUDA: exit {rc}, status {s['status']}")
    res = run("train", f"resume={int_dir}")
    check(res.returncode == 0, "resume on CUDA")
    if res.returncode:
        print(res.stdout[-3000:], res.stderr[-3000:])
    a, b = records(ref_dir), records(int_dir)
    same = a == b
    diff = max((abs(x[k] - y[k]) for x, y in zip(a, b) for k in ("loss", "recon", "kl") if k in x), default=0.0)
    check(len(a) == len(b), f"resumed run has the same records ({len(b)} vs {len(a)})")
    print(f"resumed == uninterrupted bit for bit on CUDA: {same}; largest difference {diff:.3g} nats")
    check(diff < 1e-2 * max(1.0, abs(a[-1]["loss"])), "resumed run matches the uninterrupted one on CUDA")


def fused_follows_autograd() -> None:
    """The MLP's written-out training pass (fused_mlp=true, the default) trains the same trajectory
    as the autograd step on CUDA, same seed (tests/test_reference.py checks both on the CPU)."""
    a, b = same_seed_runs(("autograd", ["fused_mlp=false"]), ("fused", []))
    rel = relative_differences(a, b, train_only=False)
    print(f"written-out pass vs autograd: {len(b)} vs {len(a)} records, largest relative difference {max(rel):.2e}")
    check(len(a) == len(b) and max(rel) < 1e-3, f"fused_mlp=true follows the autograd trajectory on {DEVICE}")


def pixelcnn() -> None:
    """The PixelCNN's CPU-motivated rewrites on CUDA (float64, so only the logic is compared):
    band convolutions against whole masked kernels (outputs and gradients), row() through the
    cone against whole-image passes, generate() through the cone against whole-image sampling,
    evaluation in pieces against whole calls; then float32 timings side by side."""
    import torch
    from bench import full_masked_kernels

    import vaerun.models.vae as vae_module
    from vaerun.likelihoods import build_likelihood
    from vaerun.metrics import iw_log_likelihood
    from vaerun.models import build_vae
    from vaerun.models.autoregressive import MaskedConv2d, PixelCNNDecoder
    from vaerun.objectives import elbo_terms

    dev = torch.device(DEVICE)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    worst = 0.0
    for kernel, mask, groups in ((3, "A", 1), (5, "B", 1), (7, "A", 3), (5, "B", 3)):
        conv = MaskedConv2d(6, 9, kernel, mask, groups).double().to(dev)
        x = torch.randn(2, 6, 7, 10, dtype=torch.float64, device=dev, requires_grad=True)
        g = torch.randn(2, 9, 7, 10, dtype=torch.float64, device=dev)
        got = (conv(x), *torch.autograd.grad(conv(x), (x, conv.weight, conv.bias), g))
        ref = torch.nn.functional.conv2d(x, conv.weight * conv.mask, conv.bias, padding=kernel // 2)
        want = (ref, *torch.autograd.grad(ref, (x, conv.weight, conv.bias), g))
        worst = max([worst] + [(a - b).abs().max().item() for a, b in zip(got, want)])
    check(worst < 1e-9, f"band convolutions = whole masked kernels on {dev} (outputs, gradients): {worst:.1e}")

    torch.manual_seed(0)
    dec = PixelCNNDecoder(3, (1, 14, 14), 1, width=12, layers=4, kernel=5, cond_channels=4).double().to(dev)
    z = torch.randn(3, 3, dtype=torch.float64, device=dev)
    x = torch.rand(3, 1, 14, 14, dtype=torch.float64, device=dev).round()
    cond = dec.condition(z)
    whole = dec.run(cond, x)
    worst = max((dec.row(cond, x, i)[:, :, 0] - whole[:, :, i]).abs().max().item() for i in range(14))
    check(worst < 1e-9, f"row(i) through the cone = the whole-image pass on {dev}, every row: {worst:.1e}")
    lik = build_likelihood("bernoulli", 1).to(dev)
    own = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # generate() starts from zeros of the default dtype
    try:
        a, b = (dec.generate(z, lik, torch.Generator(dev).manual_seed(5), crop=crop) for crop in (True, False))
    finally:
        torch.set_default_dtype(own)
    check(torch.equal(a, b) and 0 < a.mean() < 1, f"sampling through the cone = whole-image sampling on {dev}")

    results = {}
    for name in ("mlp", "autoregressive"):
        torch.manual_seed(0)
        vae = build_vae(name, (1, 8, 8), build_likelihood("bernoulli", 1), latent_dim=3, hidden=[16], channels=[4],
                        kernel=4, ar_layers=2, ar_kernel=3, ar_width=6, ar_cond_channels=2).double().to(dev).eval()
        xs = torch.rand(10, 1, 8, 8, dtype=torch.float64, device=dev).round()
        own_bytes = vae_module.DECODE_BYTES, vae_module.DECODE_BYTES_OTHER
        for budget in (2 ** 40, 1):  # unbounded, then one row per decoder call
            vae_module.DECODE_BYTES, vae_module.DECODE_BYTES_OTHER = {}, budget
            try:
                torch.manual_seed(1)
                terms = elbo_terms(vae, xs, pieces=True)
                torch.manual_seed(2)
                results[name, budget] = (terms.recon, terms.kl_per_dim, iw_log_likelihood(vae, xs, 7, chunk=3))
            finally:
                vae_module.DECODE_BYTES, vae_module.DECODE_BYTES_OTHER = own_bytes
        diff = max((u - v).abs().max().item() for u, v in zip(results[name, 1], results[name, 2 ** 40]))
        check(diff < 1e-9, f"{name}: evaluation in one-row pieces = whole calls on {dev} (ELBO terms, nll_iw): "
                           f"{diff:.1e}")

    # float32 timings, side by side (the collapse presets' decoder, 28x28, batch 64)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(0)
    vae = build_vae("autoregressive", (1, 28, 28), build_likelihood("bernoulli", 1), latent_dim=16, hidden=[400],
                    channels=[32, 64], kernel=4, ar_layers=8, ar_kernel=5, ar_width=32,
                    ar_cond_channels=16).to(dev)
    opt = torch.optim.Adam(vae.parameters(), 1e-3)
    gpu = dev.type == "cuda"  # GPU_CHECK_DEVICE=cpu: a smoke run, a few steps and images
    n, steps = (64, 50) if gpu else (2, 2)
    xb = torch.rand(n, 1, 28, 28, device=dev).round()
    training_rate(vae, opt, xb, 3)
    band, full = [], []
    for _ in range(5 if gpu else 1):
        band.append(training_rate(vae, opt, xb, steps))
        with full_masked_kernels():
            full.append(training_rate(vae, opt, xb, steps))
    band_r, full_r = statistics.median(band), statistics.median(full)
    print(f"PixelCNN training on {dev}, batch {n}: band convolutions {band_r:,.0f} ex/s, whole masked kernels "
          f"{full_r:,.0f} ex/s ({band_r / full_r:.2f}x)")
    vae.eval()
    zz = torch.randn(n, 16, device=dev)
    times = {True: [], False: []}
    for crop in (True, False) * (4 if gpu else 1):  # alternating; the first of each warms up
        sync()
        t = time.perf_counter()
        vae.decoder.generate(zz, vae.likelihood, torch.Generator(dev).manual_seed(1), crop=crop)
        sync()
        times[crop].append(time.perf_counter() - t)
    cone, whole = (statistics.median(times[c][1:] or times[c]) for c in (True, False))
    print(f"PixelCNN sampling of {n} images on {dev}: through the cone {cone:.2f} s, whole-image passes "
          f"{whole:.2f} s ({whole / cone:.2f}x; medians of {len(times[True][1:]) or 1})")

def layout() -> None:
    """The conv model's training step on CUDA with NCHW weights (what place() leaves on a GPU)
    and channels-last weights (what it gives them on a CPU), float32 and bf16 autocast, side by
    side: whether channels-last should apply on CUDA too."""
    import copy

    import torch

    from vaerun.likelihoods import build_likelihood
    from vaerun.models import build_vae
    from vaerun.optim import build_optimizer

    dev = torch.device(DEVICE)
    gpu = dev.type == "cuda"
    torch.manual_seed(0)
    vae = build_vae("conv", (1, 28, 28), build_likelihood("bernoulli", 1), latent_dim=10, hidden=[256],
                    channels=[32, 64, 64], kernel=4).to(dev)
    models = {"nchw": vae, "channels_last": copy.deepcopy(vae).to(memory_format=torch.channels_last)}
    opts = {k: build_optimizer(m.parameters(), "adam", lr=1e-3) for k, m in models.items()}
    xb = torch.rand(128, 1, 28, 28, device=dev).round()
    steps = 100 if gpu else 2
    for dtype in ("fp32", "bf16"):
        for name, m in models.items():
            training_rate(m, opts[name], xb, steps, bf16=dtype == "bf16")
        runs = {name: [] for name in models}
        for _ in range(5 if gpu else 1):
            for name, m in models.items():
                runs[name].append(training_rate(m, opts[name], xb, steps, bf16=dtype == "bf16"))
        a, b = (statistics.median(v) for v in runs.values())
        print(f"conv training on {dev}, {dtype}, batch 128: NCHW weights {a:,.0f} ex/s, channels-last {b:,.0f} ex/s "
              f"({b / a:.2f}x; medians of {len(runs['nchw'])})")

SECTIONS = {"graphs": graphs_follow_eager, "fused": fused_follows_autograd, "pixelcnn": pixelcnn,
            "layout": layout, "default": default_experiment, "variants": variants, "resume": resume_after_sigint}


def main() -> int:
    import argparse

    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", help=f"comma-separated sections of {', '.join(SECTIONS)} (default: all)")
    only = (ap.parse_args().only or ",".join(SECTIONS)).split(",")
    print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
    for name, section in SECTIONS.items():
        if name in only:
            section()
    print("FAILURES:", failures if failures else "none")
    return 1 if failures else 0

if __name__ == "__main__":
    sys.exit(main())
