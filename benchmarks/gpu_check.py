"""One-shot GPU check (CI has no GPU): the training paths on CUDA, the default experiment's speed,
eval and diagnose on CUDA, and resume after SIGINT on CUDA compared with an uninterrupted run.

    python3 benchmarks/gpu_check.py            # prints a report; exit 1 when a check fails
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

VAERUN = [sys.executable, "-m", "vaerun.cli"]
OUT = Path(os.environ.get("GPU_CHECK_DIR", "/tmp/gpu_check"))
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


def main() -> int:
    import torch

    print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0))
    # 1. the default experiment, device=auto must pick CUDA
    out = run("train", f"out_dir={OUT}/default", "progress=log")
    print("\n".join(l for l in out.stdout.splitlines() if "val @" in l or "done" in l or "diagnosis" in l)[-1500:])
    d, s = summary_of(OUT / "default")
    check(out.returncode == 0 and s["status"] == "completed" and s["device"].startswith("cuda"),
          f"default experiment on {s.get('device')}: {s.get('wall_time_s')} s, "
          f"{s.get('examples_per_sec') or 0:.0f} ex/s, val elbo {s['final_val']['elbo']:.2f}")
    # 2. every model x likelihood on CUDA, a few hundred steps
    for i, extra in enumerate((["model=conv"], ["model=conv", "likelihood=gaussian", "likelihood.learn_sigma=pixel"],
                               ["likelihood=gaussian", "likelihood.learn_sigma=channel", "dataset.binarize=dynamic"])):
        out = run("train", *extra, "max_steps=300", "eval_every=150", f"out_dir={OUT}/variant{i}")
        if out.returncode:
            print(out.stdout[-2000:], out.stderr[-2000:])
        _, s = summary_of(OUT / f"variant{i}")
        check(out.returncode == 0 and s["status"] == "completed",
              f"{' '.join(extra)}: {s.get('examples_per_sec') or 0:.0f} ex/s, elbo {s['final_val']['elbo']:.2f}")
    # 3. eval (importance weighted) and diagnose on CUDA
    out = run("eval", str(d), "--iw-samples", "1000", "--split", "test")
    check(out.returncode == 0 and "nll_iw" in out.stdout, "vaerun eval --iw-samples 1000 on CUDA")
    print(out.stdout[-1200:])
    out = run("diagnose", str(d))
    check(out.returncode == 0, "vaerun diagnose on CUDA")
    # 4. SIGINT then resume on CUDA vs uninterrupted
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
    print("FAILURES:", failures if failures else "none")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
