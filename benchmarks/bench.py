"""vaerun's speed benchmarks: `make bench` (see docs/performance.md, which this script writes).

    python benchmarks/bench.py [--data ../shared/data] [--quick] [--only conventional,overhead,...]

Every comparison runs both sides in this process, alternating, several repeats, and reports
medians and their ratio. Sections:

  conventional  examples/s over full MNIST epochs: vaerun's training path vs the conventional
                loop of pytorch/examples vae/main.py (torchvision MNIST + ToTensor + DataLoader),
                same model (784-400-20, Bernoulli) and optimizer (Adam 1e-3), batch 128
  denormals     vaerun's training path with denormal floats flushed (flush_denormals=true, the
                default) vs kept, in two processes (the mode reaches torch's worker threads only
                from a process's start), alternating epochs
  overhead      vaerun's full step (batch gather, binarization, schedule, free bits, finiteness
                guard, metric accumulation, logging at its default interval) vs a bare step on a
                pre-made batch tensor, same model and optimizer
  ceiling       FLOP/s of the MLP training step at batch 128 and 1024 vs plain torch.mm of the
                same shapes (the machine's ceiling for this arithmetic)
  models        training throughput of the conv and autoregressive models on MNIST, and the time
                to sample 64 images from the autoregressive decoder
  logistic      the discretized logistic likelihood (the grey-level datasets' default) in the MLP's
                training loop: its written-out output gradient vs the same step through autograd,
                alternating epochs on MNIST grey levels
  iw            importance-weighted NLL throughput (samples/s) and the projected time of the full
                MNIST test set at K = 5000
  end_to_end    wall time of the default `vaerun train` (what `make train` runs once installed)

Writes benchmarks/results.json and docs/performance.md and prints a table.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("conventional", "denormals", "overhead", "ceiling", "models", "logistic", "iw", "end_to_end")


# ---------------------------------------------------------------- helpers
def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from vaerun.train import cpu_has_bf16

    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "cpu_bf16": cpu_has_bf16(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from omegaconf import OmegaConf

    from vaerun.config import register_configs

    register_configs()
    with initialize_config_module("vaerun.conf", version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides)
    return OmegaConf.to_object(cfg), OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


EXAMPLES_MODEL = ["dataset=mnist", "model=mlp", "model.hidden=[400]", "model.latent_dim=20", "likelihood=bernoulli",
                  "optimizer=adam", "optimizer.lr=1e-3", "batch_size=128", "schedule=constant", "device=cpu",
                  "progress=log", "tensorboard=false"]
NEVER = str(10 ** 9)  # no evaluation, grids or checkpoints inside a timed stretch


class VaerunLoop:
    """vaerun's own training path: Trainer._step over Data.train_epoch batches, logging to a real
    run folder at the default log_every."""

    def __init__(self, root: str, extra: list[str] = ()):
        from vaerun.loop import Trainer
        from vaerun.progress import Reporter
        from vaerun.runs import RunFolder
        from vaerun.train import build

        cfg, resolved = compose([*EXAMPLES_MODEL, f"dataset.root={root}", f"max_steps={NEVER}", f"eval_every={NEVER}",
                                 f"sample_every={NEVER}", f"checkpoint_every={NEVER}", *extra])
        self.tmp = tempfile.TemporaryDirectory()
        self.parts = build(cfg)
        self.trainer = Trainer(cfg, self.parts, RunFolder(Path(self.tmp.name) / "run"), resolved, None)
        self.trainer.reporter = Reporter(self.parts.total_steps, False)
        self.cfg = cfg
        self._batches = iter(())

    def epoch(self) -> tuple[int, float]:
        """One full epoch: (examples, seconds)."""
        t, n = time.perf_counter(), 0
        tr = self.trainer
        tr.t_log = time.time()
        for xb in self.parts.data.train_epoch(self.cfg.batch_size, tr.rngs.order):
            tr._step(xb)
            n += xb.shape[0]
        return n, time.perf_counter() - t

    def steps(self, k: int) -> float:
        """Seconds for the next k steps of an endless sequence of epochs (as in training: one
        permutation per epoch, not per call)."""
        tr = self.trainer
        t = time.perf_counter()
        for _ in range(k):
            xb = next(self._batches, None)
            if xb is None:
                self._batches = iter(self.parts.data.train_epoch(self.cfg.batch_size, tr.rngs.order))
                xb = next(self._batches)
            tr._step(xb)
        return time.perf_counter() - t


class ExamplesVAE(torch.nn.Module):
    """The model of pytorch/examples vae/main.py, verbatim in structure."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = torch.nn.Linear(784, 400), torch.nn.Linear(400, 20), torch.nn.Linear(400, 20)
        self.fc3, self.fc4 = torch.nn.Linear(20, 400), torch.nn.Linear(400, 784)

    def forward(self, x):
        h1 = torch.relu(self.fc1(x.view(-1, 784)))
        mu, logvar = self.fc21(h1), self.fc22(h1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.fc4(torch.relu(self.fc3(z)))), mu, logvar


class ConventionalLoop:
    """pytorch/examples vae/main.py's train(): torchvision MNIST + ToTensor + DataLoader (no
    workers on the CPU, as there), BCE on grey levels + KL, Adam 1e-3, loss.item() every step."""

    def __init__(self, root: str):
        from torch.utils.data import DataLoader
        from torchvision import datasets, transforms

        ds = datasets.MNIST(root, train=True, download=False, transform=transforms.ToTensor())
        self.loader = DataLoader(ds, batch_size=128, shuffle=True)
        self.model = ExamplesVAE()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)

    def epoch(self) -> tuple[int, float]:
        import torch.nn.functional as F

        t, n, total = time.perf_counter(), 0, 0.0
        self.model.train()
        for data, _ in self.loader:
            self.opt.zero_grad()
            recon, mu, logvar = self.model(data)
            bce = F.binary_cross_entropy(recon, data.view(-1, 784), reduction="sum")
            loss = bce - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            loss.backward()
            total += loss.item()
            self.opt.step()
            n += data.shape[0]
        return n, time.perf_counter() - t


def bare_step_fn(model, optimizer, x, compile: bool = False, fused: bool = True, autocast=None):
    """The least a training step can do: forward, the loss, backward, the optimizer step, done
    the way vaerun's step does them: the MLP's written-out pass when ``fused`` (fused_mlp=true),
    else autograd (the forward compiled as compile=true compiles it, when ``compile``), and the
    fused Adam kernel called directly. So the overhead section measures the loop's bookkeeping
    only. ``autocast``: torch.bfloat16 runs the written-out pass as precision=bf16 does."""
    from vaerun.models.fused import fused_pass
    from vaerun.objectives import training_loss
    from vaerun.optim import optimizer_step, zero_grad
    from vaerun.train import make_forward

    forward = make_forward(model, x.device, compile=compile)
    written = fused_pass(model, autocast) if fused and not compile else None

    def step():
        zero_grad(optimizer)
        if written is not None:
            written(x, 1.0, 0.0)
        else:
            training_loss(forward(x), 1.0, 0.0).backward()
        optimizer_step(optimizer)
    return step


def time_calls(fn, k: int) -> float:
    t = time.perf_counter()
    for _ in range(k):
        fn()
    return time.perf_counter() - t


def alternate_epochs(loops: dict, repeats: int, epochs_each: int = 1) -> tuple[dict, dict]:
    """Examples/s of each loop (``.epoch() -> (examples, seconds)``) over ``repeats`` rounds in
    which the loops take turns, ``epochs_each`` epochs a turn, after one warm-up epoch each
    (first-touch allocations, thread pools, compilation): (rates per loop, warm-up seconds)."""
    warmup = {name: loop.epoch()[1] for name, loop in loops.items()}
    rates = {name: [] for name in loops}
    for _ in range(repeats):
        for name, loop in loops.items():
            n, s = 0, 0.0
            for _ in range(epochs_each):
                dn, ds = loop.epoch()
                n, s = n + dn, s + ds
            rates[name].append(n / s)
    return rates, warmup


# ---------------------------------------------------------------- sections
def conventional(root: str, repeats: int, epochs_each: int) -> dict:
    """Five contenders, alternating: the conventional loop; vaerun on the same grey levels (its
    Bernoulli cross-entropy is then the example's loss, term for term); vaerun with dynamic
    binarization (its MNIST default: a fresh Bernoulli draw per pixel per step, which the
    conventional loop does not do); vaerun on grey levels through autograd (fused_mlp=false);
    vaerun on grey levels in bf16 (precision=bf16: other arithmetic, so not the like-for-like
    ratio, but what a user with a bf16 CPU or a GPU may choose)."""
    loops = {"conventional": ConventionalLoop(root), "vaerun": VaerunLoop(root, ["dataset.binarize=none"]),
             "vaerun_dynamic": VaerunLoop(root), "vaerun_autograd": VaerunLoop(root, ["dataset.binarize=none",
                                                                                     "fused_mlp=false"]),
             "vaerun_bf16": VaerunLoop(root, ["dataset.binarize=none", "precision=bf16"])}
    rates, warmup = alternate_epochs(loops, repeats, epochs_each)
    med = {k: median(v) for k, v in rates.items()}
    return {"examples_per_sec": rates, "median": med, "ratio": med["vaerun"] / med["conventional"],
            "ratio_dynamic": med["vaerun_dynamic"] / med["conventional"],
            "ratio_autograd": med["vaerun_autograd"] / med["conventional"],
            "ratio_bf16": med["vaerun_bf16"] / med["conventional"], "warmup_epoch_s": warmup, "target": 5.0,
            "vaerun_epoch_examples": len(loops["vaerun"].parts.data.train), "conventional_epoch_examples": 60000}


def denormal_moments(optimizer) -> int:
    """Adam moments that hold a denormal float now (read as bits: a flushing thread compares one as 0)."""
    n = 0
    for state in optimizer.state.values():
        for key in ("exp_avg", "exp_avg_sq"):
            bits = state[key].view(torch.int32) & 0x7FFFFFFF
            n += int(((bits > 0) & (bits < 0x00800000)).sum())
    return n


def denormal_worker(root: str, on: bool) -> int:
    """One side of the denormals section, in its own process: an epoch of vaerun's training path
    for every line on stdin, a JSON line back."""
    from vaerun.train import flush_denormals

    state = flush_denormals(on)  # before any parallel operation: every thread of the pool inherits it
    loop = VaerunLoop(root, ["dataset.binarize=none", f"flush_denormals={str(on).lower()}"])
    print(json.dumps({"state": state}), flush=True)
    for line in sys.stdin:
        if line.strip() == "iw":  # importance-weighted NLL of the model trained so far: K = 5000, 100 test images
            print(json.dumps(iw_rate(loop.parts, 100, 5000)), flush=True)
            continue
        n, s = loop.epoch()
        print(json.dumps({"examples": n, "seconds": s, "denormal_moments": denormal_moments(loop.parts.optimizer),
                          "moments": 2 * sum(p.numel() for p in loop.parts.model.parameters())}), flush=True)
    return 0


def iw_rate(parts, n: int, k: int) -> dict:
    """Importance samples per second of ``iw_log_likelihood`` on the first n test images (fixed
    binarization and draws), and the mean NLL it gives."""
    from vaerun.metrics import iw_log_likelihood

    x = parts.data.prepare(parts.data.test.images[:n], torch.Generator().manual_seed(0))
    parts.model.eval()
    with torch.inference_mode():
        torch.manual_seed(0)
        t = time.perf_counter()
        nll = -iw_log_likelihood(parts.model, x, k)
        seconds = time.perf_counter() - t
    parts.model.train()
    return {"samples_per_sec": n * k / seconds, "nll": float(nll.mean())}


def denormals(root: str, repeats: int) -> dict:
    """vaerun's training path (the conventional section's model, grey levels) with flush_denormals
    on and off, one process each, alternating epochs after one warm-up epoch each (the moments of
    dead units reach the denormal range during the first epoch)."""
    procs = {on: subprocess.Popen([sys.executable, __file__, "--data", root, "--denormal-worker", str(int(on))],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for on in (True, False)}

    def ask(on: bool, what: str = "epoch") -> dict:
        procs[on].stdin.write(what + "\n")
        procs[on].stdin.flush()
        return json.loads(procs[on].stdout.readline())

    try:
        states = {on: json.loads(p.stdout.readline())["state"] for on, p in procs.items()}
        for on in procs:
            ask(on)
        runs, iws = {on: [] for on in procs}, {on: [] for on in procs}
        for _ in range(repeats):
            for on in procs:
                runs[on].append(ask(on))
        for _ in range(repeats):  # then evaluation of the models both trained: K = 5000
            for on in procs:
                iws[on].append(ask(on, "iw"))
    finally:
        for p in procs.values():
            p.stdin.close()
            p.wait()
    rate = {on: [r["examples"] / r["seconds"] for r in rs] for on, rs in runs.items()}
    paired = median([a / b for a, b in zip(rate[True], rate[False])])
    return {"examples_per_sec": {"flushed": rate[True], "kept": rate[False]},
            "median": {"flushed": median(rate[True]), "kept": median(rate[False])}, "ratio": paired,
            "denormal_moments": {"flushed": [r["denormal_moments"] for r in runs[True]],
                                 "kept": [r["denormal_moments"] for r in runs[False]]},
            "moments": runs[True][0]["moments"], "modes": {"flushed": states[True], "kept": states[False]},
            "iw_samples_per_sec": {"flushed": [r["samples_per_sec"] for r in iws[True]],
                                   "kept": [r["samples_per_sec"] for r in iws[False]]},
            "iw_ratio": median([a["samples_per_sec"] / b["samples_per_sec"] for a, b in zip(iws[True], iws[False])]),
            "iw_nll": {"flushed": iws[True][-1]["nll"], "kept": iws[False][-1]["nll"]}}


def overhead(root: str, repeats: int, steps: int) -> dict:
    """Two variants: on MNIST as statically binarized data (the loop's own bookkeeping: what the
    target is about) and with dynamic binarization (adds a fresh Bernoulli draw per pixel per step)."""
    out = {"static": overhead_one(root, repeats, steps, ["dataset.binarize=static"]),
           "dynamic": overhead_one(root, repeats, steps, []),
           "compiled": overhead_one(root, repeats, steps, ["dataset.binarize=static", "compile=true"])}
    out.update(ratio=out["static"]["ratio"], target=1.10, median=out["static"]["median"], steps=steps,
               log_every=out["static"]["log_every"])
    return out


def overhead_one(root: str, repeats: int, steps: int, extra: list[str]) -> dict:
    import copy

    ours = VaerunLoop(root, extra)
    model = copy.deepcopy(ours.parts.model)
    opt = type(ours.parts.optimizer)(model.parameters(), **{k: v for k, v in ours.parts.optimizer.defaults.items()
                                                           if k in ("lr", "betas", "eps", "weight_decay", "fused")})
    x = ours.parts.data.prepare(ours.parts.data.train.images[:128])
    bare = bare_step_fn(model, opt, x, compile=ours.cfg.compile)
    ours.steps(20), time_calls(bare, 20)
    times = {"vaerun": [], "bare": []}
    block = 10  # alternate every 10 steps: both sides see the same drift of this machine's speed
    for _ in range(repeats):
        tv = tb = 0.0
        for _ in range(steps // block):
            tb += time_calls(bare, block)
            tv += ours.steps(block)
        times["bare"].append(tb / steps)
        times["vaerun"].append(tv / steps)
    med = {k: median(v) for k, v in times.items()}
    paired = median([a / b for a, b in zip(times["vaerun"], times["bare"])])
    return {"seconds_per_step": times, "median": med, "ratio": paired, "ratio_of_medians": med["vaerun"] / med["bare"],
            "target": 1.10, "steps": steps, "log_every": ours.cfg.log_every}


def linear_flops(model, batch: int) -> tuple[float, list[tuple[int, int, int]]]:
    """FLOPs of one training step's matrix products (forward, input and weight gradients; the
    first layer needs no input gradient) and the (m, k, n) shapes of those products."""
    shapes, first = [], True
    for mod in model.modules():
        if isinstance(mod, torch.nn.Linear):
            i, o = mod.in_features, mod.out_features
            shapes.append((batch, i, o))          # forward  x W^T
            shapes.append((o, batch, i))          # weight gradient  g^T x
            if not first:
                shapes.append((batch, o, i))      # input gradient  g W
            first = False
    return float(sum(2 * m * k * n for m, k, n in shapes)), shapes


def ceiling(root: str, repeats: int) -> dict:
    import copy

    from vaerun.likelihoods import build_likelihood
    from vaerun.models import build_vae
    from vaerun.optim import build_optimizer, optimizer_step

    out = {}
    for batch, steps in ((128, 150), (1024, 30)):
        torch.manual_seed(0)
        model = build_vae("mlp", (1, 28, 28), build_likelihood("bernoulli", 1), latent_dim=20, hidden=[400],
                          channels=[32], kernel=4)
        opt = build_optimizer(model.parameters(), "adam", lr=1e-3)
        x = torch.rand(batch, 1, 28, 28).round()
        flops, shapes = linear_flops(model, batch)
        mats = [(torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)) for m, k, n in shapes]

        def mm():
            for a, b, c in mats:
                torch.mm(a, b, out=c)
        step = bare_step_fn(model, opt, x)
        twin = copy.deepcopy(model)  # the same step in bf16 (precision=bf16), on its own copy
        bf16 = bare_step_fn(twin, build_optimizer(twin.parameters(), "adam", lr=1e-3), x, autocast=torch.bfloat16)

        def adam():  # the update alone, on the gradients the last step left
            optimizer_step(opt)
        time_calls(step, 10), time_calls(mm, 10), time_calls(adam, 10), time_calls(bf16, 10)
        t_step, t_mm, t_adam, t_bf16 = [], [], [], []
        for _ in range(repeats):
            t_mm.append(time_calls(mm, steps) / steps)
            t_step.append(time_calls(step, steps) / steps)
            t_adam.append(time_calls(adam, steps) / steps)
            t_bf16.append(time_calls(bf16, steps) / steps)
        s, m = median(t_step), median(t_mm)
        out[str(batch)] = {"flops_per_step": flops, "step_s": s, "mm_s": m, "adam_s": median(t_adam),
                           "achieved_gflops": flops / s / 1e9,
                           "ceiling_gflops": flops / m / 1e9, "fraction": m / s,
                           "target": 0.5 if batch == 128 else 0.65,
                           "bf16_step_s": median(t_bf16),
                           "bf16_speedup": median([a / b for a, b in zip(t_step, t_bf16)])}
    return out


def models(root: str, repeats: int, quick: bool) -> dict:
    import copy

    from vaerun.optim import build_optimizer
    from vaerun.train import build, train_step

    res = {}
    for name, extra, bs, steps in (("conv", ["model=conv"], 128, 20 if quick else 60),
                                   ("autoregressive", ["model=autoregressive", "model.ar_layers=8", "model.ar_kernel=5",
                                                       "model.ar_width=32", "model.ar_cond_channels=16",
                                                       "model.latent_dim=16"], 64, 4 if quick else 12)):
        cfg, _ = compose([*EXAMPLES_MODEL, f"dataset.root={root}", *extra, f"batch_size={bs}", "dataset.subset=4096"])
        p = build(cfg)
        xs = [p.data.prepare(p.data.train.images[i * bs:(i + 1) * bs]) for i in range(4)]

        def rate(model=p.model, optimizer=p.optimizer) -> float:
            t = time.perf_counter()
            for i in range(steps):
                train_step(model, optimizer, xs[i % 4], 1.0, 0.0, 0.0)
            return steps * bs / (time.perf_counter() - t)
        train_step(p.model, p.optimizer, xs[0], 1.0, 0.0, 0.0)
        if name == "conv":  # side by side: its weights NCHW, as built (vaerun.models.place makes them channels-last)
            nchw = copy.deepcopy(p.model).to(memory_format=torch.contiguous_format)
            nchw_opt = build_optimizer(nchw.parameters(), "adam", lr=1e-3)
            ref, pairs = "nchw", max(repeats, 7)  # conv steps are short: more pairs

            def ref_rate() -> float:
                return rate(nchw, nchw_opt)
        else:  # side by side: every masked conv with its whole masked kernel
            ref, pairs = "full_kernel", repeats

            def ref_rate() -> float:
                with full_masked_kernels():
                    return rate()
        rates, full = [], []
        for _ in range(pairs):
            rates.append(rate())
            full.append(ref_rate())
        res[name] = {"examples_per_sec": median(rates), "runs": rates, "batch_size": bs,
                     "params": sum(q.numel() for q in p.model.parameters()),
                     f"{ref}_examples_per_sec": median(full), f"{ref}_runs": full,
                     f"speedup_vs_{ref}": median([a / b for a, b in zip(rates, full)])}
        res[name].update(evaluation_rows(p, repeats, quick))
        if name == "autoregressive":
            n = 8 if quick else 64
            gen = torch.Generator().manual_seed(0)
            p.model.eval()
            t = time.perf_counter()
            p.model.sample(n, generator=gen)
            res[name]["sample_seconds"] = time.perf_counter() - t
            res[name]["sample_images"] = n
            z = torch.randn(8, p.model.latent_dim, generator=gen)  # side by side: the cone vs whole-image passes
            dec, times = p.model.decoder, {}
            for crop in (True, False):
                t = time.perf_counter()
                dec.generate(z, p.model.likelihood, torch.Generator().manual_seed(1), crop=crop)
                times[crop] = time.perf_counter() - t
            res[name].update(sample8_cone_seconds=times[True], sample8_whole_seconds=times[False])
            res[name]["config"] = "8 masked layers, kernel 5, width 32 (the collapse presets' decoder), 28x28"
    return res


def logistic(root: str, repeats: int) -> dict:
    """The discretized logistic (mixtures=1) in vaerun's training loop on MNIST grey levels, the
    conventional section's model: DiscretizedLogistic.log_prob_grad written out (what training
    uses) vs the base class's autograd through log_prob, two loops alternating epoch by epoch."""
    from vaerun.likelihoods import DiscretizedLogistic, Likelihood

    class ThroughAutograd(DiscretizedLogistic):
        def log_prob_grad(self, params, x):
            return Likelihood.log_prob_grad(self, params, x)

    extra = ["dataset.binarize=none", "likelihood=logistic"]
    loops = {"written_out": VaerunLoop(root, extra), "autograd": VaerunLoop(root, extra)}
    loops["autograd"].parts.model.likelihood.__class__ = ThroughAutograd
    rates, _ = alternate_epochs(loops, repeats)
    return {"examples_per_sec": rates, "median": {k: median(v) for k, v in rates.items()},
            "ratio": median([a / b for a, b in zip(rates["written_out"], rates["autograd"])]),
            "params": sum(q.numel() for q in loops["written_out"].parts.model.parameters())}


def evaluation_rows(p, repeats: int, quick: bool) -> dict:
    """Evaluation's decoder throughput (rows per second), as a validation pass makes them: the
    ELBO of one eval batch (1,000 images at the default eval_batch_size; fewer here) and K = 50
    importance samples of some of them, decoded in pieces of bounded memory (VAE.decode_pieces)
    and, side by side, in whole calls as before."""
    import vaerun.models.vae as vae_module
    from vaerun.metrics import iw_log_likelihood
    from vaerun.objectives import elbo_terms

    n, n_iw = (128, 8) if quick else (512, 32)
    x = p.data.prepare(p.data.val.images[:n])
    p.model.eval()

    def rate() -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            elbo_terms(p.model, x, pieces=True)
            iw_log_likelihood(p.model, x[:n_iw], 50)
        return (n + 50 * n_iw) / (time.perf_counter() - t)
    rate()
    pieces, whole = [], []
    own = vae_module.DECODE_BYTES
    for _ in range(repeats):
        pieces.append(rate())
        vae_module.DECODE_BYTES = {"cpu": 2 ** 62}  # unbounded: one call per batch or chunk of samples
        try:
            whole.append(rate())
        finally:
            vae_module.DECODE_BYTES = own
    p.model.train()
    return {"eval_rows_per_sec": median(pieces), "eval_rows_per_sec_whole": median(whole),
            "eval_speedup": median([a / b for a, b in zip(pieces, whole)]), "eval_examples": n, "eval_iw_examples": n_iw}


@contextlib.contextmanager
def full_masked_kernels():
    """MaskedConv2d as the textbook writes it (the whole k x k kernel times its mask, the rows
    below the centre computed as zeros) instead of vaerun's band of rows: the reference the
    autoregressive model's speed-up is measured against."""
    import torch.nn.functional as F

    from vaerun.models.autoregressive import MaskedConv2d

    def forward(self, x, top=True):  # training passes only: whole images from the top row
        assert top
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)
    own = MaskedConv2d.forward
    MaskedConv2d.forward = forward
    try:
        yield
    finally:
        MaskedConv2d.forward = own


def iw(root: str, repeats: int, quick: bool) -> dict:
    from vaerun.train import build

    cfg, _ = compose([*EXAMPLES_MODEL, f"dataset.root={root}"])
    p = build(cfg)
    k, n = 5000, (20 if quick else 100)
    iw_rate(p, 10, 500)  # warm-up
    rates = [iw_rate(p, n, k)["samples_per_sec"] for _ in range(repeats)]
    rate = median(rates)
    full = len(p.data.test) * k / rate
    return {"samples_per_sec": rate, "runs": rates, "k": k, "examples_timed": n,
            "projected_full_test_s": full, "test_examples": len(p.data.test), "target_s": 600}


def end_to_end() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "vaerun.cli", "train", f"out_dir={tmp}", "progress=log"],
                              capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t
        summary = next(Path(tmp).rglob("summary.json"), None)
        s = json.loads(summary.read_text()) if summary else {}
    return {"wall_s": wall, "returncode": proc.returncode, "training_wall_s": s.get("wall_time_s"),
            "val_elbo": (s.get("final_val") or {}).get("elbo"), "target_s": 180}


# ---------------------------------------------------------------- report
def table_rows(r: dict) -> list[tuple[str, str, str, str]]:
    rows = []
    if "conventional" in r:
        c = r["conventional"]
        rows.append(("vaerun vs conventional loop (MNIST MLP, ex/s)",
                     f"{c['median']['vaerun']:,.0f} vs {c['median']['conventional']:,.0f}", f"{c['ratio']:.1f}x",
                     f">= {c['target']:.0f}x"))
        for key, label in (("dynamic", "the same, vaerun with dynamic binarization"),
                           ("autograd", "the same, vaerun through autograd (fused_mlp=false)"),
                           ("bf16", "the same, vaerun in bf16 (precision=bf16: other arithmetic)")):
            if f"ratio_{key}" in c:
                rows.append((label, f"{c['median'][f'vaerun_{key}']:,.0f} vs {c['median']['conventional']:,.0f}",
                             f"{c[f'ratio_{key}']:.1f}x", ""))
    if "denormals" in r:
        d = r["denormals"]
        rows.append(("vaerun, denormals flushed vs kept (ex/s)",
                     f"{d['median']['flushed']:,.0f} vs {d['median']['kept']:,.0f}", f"{d['ratio']:.2f}x", ""))
        if "iw_ratio" in d:
            rows.append(("the same models' IW NLL, K=5000 (samples/s)",
                         f"{median(d['iw_samples_per_sec']['flushed']):,.0f} vs "
                         f"{median(d['iw_samples_per_sec']['kept']):,.0f}", f"{d['iw_ratio']:.2f}x", ""))
    if "overhead" in r:
        o = r["overhead"]
        for kind, label in (("static", "full step vs bare step (ms/step, batch 128)"),
                            ("dynamic", "the same with dynamic binarization per batch"),
                            ("compiled", "the same, both compiled (compile=true)")):
            if kind not in o:
                continue
            v = o[kind]
            rows.append((label, f"{1e3 * v['median']['vaerun']:.2f} vs {1e3 * v['median']['bare']:.2f}",
                         f"{v['ratio']:.3f}x", f"<= {o['target']:.2f}x" if kind == "static" else ""))
    for b, c in r.get("ceiling", {}).items():
        rows.append((f"MLP step vs torch.mm ceiling, batch {b} (GFLOP/s)",
                     f"{c['achieved_gflops']:.1f} of {c['ceiling_gflops']:.1f}", f"{100 * c['fraction']:.0f}%",
                     f">= {100 * c['target']:.0f}%"))
        if "bf16_step_s" in c:
            rows.append((f"the MLP step in bf16 vs float32, batch {b} (ms)",
                         f"{1e3 * c['bf16_step_s']:.2f} vs {1e3 * c['step_s']:.2f}", f"{c['bf16_speedup']:.2f}x", ""))
    for name, m in r.get("models", {}).items():
        rows.append((f"{name} training (MNIST, batch {m['batch_size']})", f"{m['examples_per_sec']:,.0f} ex/s", "", ""))
        if "full_kernel_examples_per_sec" in m:
            rows.append(("the same with whole masked kernels", f"{m['full_kernel_examples_per_sec']:,.0f} ex/s",
                         f"{m['speedup_vs_full_kernel']:.2f}x", ""))
        if "nchw_examples_per_sec" in m:
            rows.append(("the same with NCHW weights (channels-last is the CPU default)",
                         f"{m['nchw_examples_per_sec']:,.0f} ex/s", f"{m['speedup_vs_nchw']:.2f}x", ""))
        if "eval_rows_per_sec" in m:
            rows.append((f"{name} evaluation, decoder rows/s (in pieces vs whole batches)",
                         f"{m['eval_rows_per_sec']:,.0f} vs {m['eval_rows_per_sec_whole']:,.0f}",
                         f"{m['eval_speedup']:.2f}x", ""))
        if "sample_seconds" in m:
            rows.append((f"{name} sampling, {m['sample_images']} images 28x28", f"{m['sample_seconds']:.1f} s", "", ""))
        if "sample8_cone_seconds" in m:
            rows.append(("the same, 8 images: each pass through the cone vs on the whole image",
                         f"{m['sample8_cone_seconds']:.1f} vs {m['sample8_whole_seconds']:.1f} s",
                         f"{m['sample8_whole_seconds'] / m['sample8_cone_seconds']:.2f}x", ""))
    if "logistic" in r:
        g = r["logistic"]
        rows.append(("logistic likelihood, MLP training (MNIST grey levels, ex/s): written-out gradient vs autograd",
                     f"{g['median']['written_out']:,.0f} vs {g['median']['autograd']:,.0f}", f"{g['ratio']:.2f}x", ""))
    if "iw" in r:
        i = r["iw"]
        rows.append((f"IW NLL, K={i['k']} (importance samples/s)", f"{i['samples_per_sec']:,.0f}",
                     f"full test: {i['projected_full_test_s'] / 60:.1f} min", "<= 10 min"))
    if "end_to_end" in r:
        e = r["end_to_end"]
        rows.append(("default `vaerun train` wall time", f"{e['wall_s']:.0f} s (training {e['training_wall_s']:.0f} s)",
                     "", f"make train <= {e['target_s']} s"))
    return rows


def verdict(r: dict) -> dict:
    out = {}
    if "conventional" in r:
        c = r["conventional"]
        out["conventional"] = c["ratio"] >= c["target"]
    if "overhead" in r:
        out["overhead"] = r["overhead"]["ratio"] <= r["overhead"]["target"]
    for b, c in r.get("ceiling", {}).items():
        out[f"ceiling_{b}"] = c["fraction"] >= c["target"]
    if "iw" in r:
        out["iw"] = r["iw"]["projected_full_test_s"] <= r["iw"]["target_s"]
    return out


def write_page(r: dict, path: Path) -> None:
    """docs/performance.md from the results: every number on the page comes from ``r``."""
    m = r["machine"]
    lines = ["# Performance", "",
             "Generated by `make bench` (`python benchmarks/bench.py`) from `benchmarks/results.json`; "
             "do not edit by hand. Every comparison runs both sides alternating, in one process (the "
             "denormals section: one process per side), and reports medians.", "",
             f"Machine: {m['cpu']}" + ({True: " (with bf16 instructions)", False: " (no bf16 instructions)"}
                                       .get(m.get("cpu_bf16"), "")) + f", {m['cores']} cores visible, torch {m['torch']} "
             f"({m['torch_threads']} threads), Python {m['python']}, {m['platform']}"
             + (f"; denormal floats flushed on {m['denormals']} (vaerun's default, for both contenders)"
                if m.get("denormals") in ("all threads", "this thread only") else "") + f"; measured {r['started']} "
             f"in {r['seconds'] / 60:.1f} min" + (" (sections rerun alone: " + ", ".join(
                 f"{k} at {v}" for k, v in r["updated_sections"].items()) + ")" if r.get("updated_sections") else "")
             + ".", "",
             "| benchmark | measured | ratio | target | met |", "| --- | --- | --- | --- | --- |"]
    met = r.get("targets_met", {})
    keys = {"vaerun vs conventional": "conventional", "full step vs bare": "overhead",
            "MLP step vs torch.mm ceiling, batch 128 (": "ceiling_128",
            "MLP step vs torch.mm ceiling, batch 1024 (": "ceiling_1024",
            "IW NLL": "iw"}
    for row in table_rows(r):
        key = next((v for k, v in keys.items() if row[0].startswith(k)), None)
        mark = "" if key is None or key not in met else ("yes" if met[key] else "**no**")
        lines.append("| " + " | ".join([*row, mark]) + " |")
    lines += ["", "## What is measured", ""]
    if "conventional" in r:
        c = r["conventional"]
        lines += ["**Against the conventional loop.** pytorch/examples `vae/main.py` trains its 784-400-20 VAE "
                  "from `torchvision.datasets.MNIST` with `transforms.ToTensor()` through a `DataLoader` (batch 128, "
                  "shuffled, no worker processes on the CPU, as there): every example is decoded from a PIL image "
                  "and collated in Python, every step. vaerun keeps MNIST as one uint8 tensor, gathers a batch "
                  "from it with one `index_select`, scales it on the device, runs the MLP's written-out training "
                  "pass (`fused_mlp=true`: no autograd graph) and the fused Adam kernel, and syncs with the host "
                  "once per step. Same model shape, Bernoulli cross-entropy on the same grey levels "
                  "(`dataset.binarize=none`), Adam 1e-3, batch 128; examples per second over full epochs "
                  f"({c['vaerun_epoch_examples']:,} examples for vaerun, whose validation split is held out; "
                  f"{c['conventional_epoch_examples']:,} for the conventional loop), the contenders alternating "
                  "epoch by epoch. Per repeat: "
                  + ", ".join(f"{a:,.0f} vs {b:,.0f}" for a, b in zip(c["examples_per_sec"]["vaerun"],
                                                                     c["examples_per_sec"]["conventional"])) + "."]
        if "ratio_dynamic" in c:
            lines += [f"With dynamic binarization (vaerun's MNIST default, a fresh Bernoulli draw per pixel per "
                      f"step that the conventional loop does not make): {c['median']['vaerun_dynamic']:,.0f} "
                      f"examples/s, {c['ratio_dynamic']:.1f}x. Through autograd instead of the written-out pass "
                      f"(`fused_mlp=false`): {c['median']['vaerun_autograd']:,.0f} examples/s, "
                      f"{c['ratio_autograd']:.1f}x."]
        if "ratio_bf16" in c:
            lines += [f"In bf16 (`precision=bf16`: the layers' products and activations in bfloat16, the terms in "
                      f"float32; the same written-out pass): {c['median']['vaerun_bf16']:,.0f} examples/s, "
                      f"{c['ratio_bf16']:.1f}x. That is other arithmetic than the conventional loop's float32, so "
                      "it is not the like-for-like ratio above; it shows what a user with a bf16-capable CPU "
                      f"({'this one has' if r['machine'].get('cpu_bf16') else 'this one lacks'} bf16 instructions)"
                      " gets from the switch."]
        lines.append("")
        if "overhead" in r and "ceiling" in r and c["ratio"] < c["target"]:
            bare = 128 / r["overhead"]["static"]["median"]["bare"]
            mm = 128 / r["ceiling"]["128"]["mm_s"]
            conv = c["median"]["conventional"]
            lines += [f"Why not 5x here: a bare step on a batch already in memory (no data work at all) runs "
                      f"{bare:,.0f} examples/s, {bare / conv:.1f}x the conventional loop, and the matrix products "
                      f"alone, with nothing else, {mm:,.0f} examples/s ({mm / conv:.1f}x). 5x needs a whole step "
                      f"of {1e3 * 128 / (5 * conv):.2f} ms, {100 * (128 / (5 * conv) / r['ceiling']['128']['mm_s'] - 1):.0f} % "
                      f"above its matrix products ({1e3 * r['ceiling']['128']['mm_s']:.2f} ms), where the bare step "
                      f"takes {1e3 * r['overhead']['static']['median']['bare']:.2f} ms: the rest is the Adam update "
                      "(every parameter and both moment buffers, each step), the likelihood's exp/log over every "
                      "pixel, and the loop's bookkeeping."
                      + (f" The products and the Adam update alone ({1e3 * r['ceiling']['128']['adam_s']:.2f} ms, "
                         "the fused kernel on the step's gradients, nothing else) already take "
                         f"{100 * (r['ceiling']['128']['mm_s'] + r['ceiling']['128']['adam_s']) * 5 * conv / 128:.0f} % "
                         "of that budget, before any activation, likelihood, reparameterization or KL."
                         if "adam_s" in r["ceiling"]["128"] else ""), ""]
    if "denormals" in r:
        d = r["denormals"]
        lines += ["**Denormals.** x86 cores compute on denormal floats (magnitude below 1.2e-38) about 100x slower "
                  "than on normal ones, and Adam's first moment of a weight whose gradient is exactly 0 (the "
                  "weights of a dead ReLU unit) decays by β1 = 0.9 per step through that range. vaerun flushes "
                  "them to zero on every CPU thread (`flush_denormals=true`, set before the process's first "
                  "parallel operation; worker threads inherit it). vaerun's training path of the conventional "
                  "section, in two processes, flushed and kept, alternating epochs after a warm-up epoch each: "
                  + ", ".join(f"{a:,.0f} vs {b:,.0f}" for a, b in zip(d["examples_per_sec"]["flushed"],
                                                                     d["examples_per_sec"]["kept"]))
                  + f" examples/s, {d['ratio']:.2f}x (median of paired epochs). Adam moments holding a denormal "
                  "after each epoch, of " + f"{d['moments']:,}: kept "
                  + ", ".join(f"{v:,}" for v in d["denormal_moments"]["kept"]) + "; flushed "
                  + ", ".join(f"{v:,}" for v in d["denormal_moments"]["flushed"]) + "."
                  + (" Then the importance-weighted NLL of the two models so trained (K = 5000, 100 test images, "
                     "alternating): " + ", ".join(f"{a:,.0f} vs {b:,.0f}" for a, b in zip(
                         d["iw_samples_per_sec"]["flushed"], d["iw_samples_per_sec"]["kept"]))
                     + f" samples/s, {d['iw_ratio']:.2f}x (`vaerun eval` flushes as training did); NLL "
                     f"{d['iw_nll']['flushed']:.4f} vs {d['iw_nll']['kept']:.4f} nats." if "iw_ratio" in d else "")
                  + " Every other section of "
                  "this page runs flushed, the conventional loop included (it gains from it too, so the ratio "
                  "above is not flattered by it).", ""]
    if "conventional" in r:
        lines += ["**Compiled.** `compile=true` (torch.compile, Inductor) replaces the written-out pass with a "
                  "compiled autograd pass; on this CPU it does not pay for the MLP (the step is mostly the same "
                  "BLAS matrix products either way; see the overhead rows). On an H200 its default mode does not "
                  "pay either (the small models' steps are bound by the host's kernel launches); "
                  "`compile_mode=reduce_overhead`, which replays the compiled passes as CUDA graphs, does for the "
                  "conv and autoregressive models, while the MLP's written-out pass is faster still (72,152 vs "
                  "59,753 examples/s): see performance_gpu.md.", ""]
    if "overhead" in r:
        o = r["overhead"]
        st, dy = o["static"], o["dynamic"]
        lines += ["**Overhead.** vaerun's full step (`Trainer._step`: batch gather from the uint8 tensor, scaling, "
                  "the β schedule, the free-bits penalty, the finiteness guard (for the written-out pass a bound on "
                  "every gradient from the norms of its (batch, width) factors; the global gradient norm on "
                  "logging steps), the running sums of the terms (each step's batch means kept on the device, "
                  f"summed on the host at each record), a metrics.jsonl record every {o['log_every']} steps) "
                  "against a bare step "
                  "(the same written-out forward and backward and the same fused Adam kernel call, nothing else) on "
                  f"one pre-made batch tensor, same model; {o['steps']} steps per repeat, the two sides alternating every 10 steps so that both see "
                  "the same drift of this machine's speed; the ratio is the median of the "
                  "per-repeat ratios. On statically binarized "
                  f"MNIST the loop's bookkeeping costs {100 * (st['ratio'] - 1):.0f} % "
                  f"(ms/step, vaerun: " + ", ".join(f"{1e3 * v:.2f}" for v in st["seconds_per_step"]["vaerun"])
                  + "; bare: " + ", ".join(f"{1e3 * v:.2f}" for v in st["seconds_per_step"]["bare"]) + "). With "
                  "dynamic binarization (a fresh Bernoulli draw for each of the 100,352 pixels of every batch, "
                  "which the bare step does not do) the step costs "
                  f"{100 * (dy['ratio'] - 1):.0f} % more than the bare step: the random numbers are most of that "
                  f"({1e3 * (dy['median']['vaerun'] - st['median']['vaerun']):.2f} ms per batch more than static "
                  "binarization on this CPU, already a third of `torch.bernoulli`'s cost)."
                  + (f" Compiled on both sides (`compile=true` against a bare step through the same compiled "
                     f"forward) the same bookkeeping is {100 * (o['compiled']['ratio'] - 1):.0f} % of the step "
                     f"({1e3 * o['compiled']['median']['vaerun']:.2f} vs {1e3 * o['compiled']['median']['bare']:.2f} "
                     "ms)." if "compiled" in o else ""), ""]
    if "ceiling" in r:
        lines += ["**Against the limit.** The FLOPs of one MLP training step are those of its matrix products "
                  "(forward, weight gradients, input gradients except for the first layer). The ceiling is plain "
                  "`torch.mm` on exactly those shapes, back to back, on this machine; the fraction is the step's "
                  "achieved FLOP/s over that. What the step spends beyond the products: the elementwise work "
                  "(activations, the Bernoulli log-likelihood, reparameterization, KL) and the Adam update, which "
                  "reads and writes every parameter and both moment buffers each step: at batch 128 it is a large "
                  "share of the step, at batch 1024 much less.", ""]
        for b, c in r["ceiling"].items():
            lines.append(f"- batch {b}: {c['flops_per_step'] / 1e6:.0f} MFLOP per step; step {1e3 * c['step_s']:.2f} ms "
                         f"({c['achieved_gflops']:.1f} GFLOP/s), the products alone {1e3 * c['mm_s']:.2f} ms "
                         f"({c['ceiling_gflops']:.1f} GFLOP/s): {100 * c['fraction']:.0f}% of the ceiling."
                         + (f" The same step in bf16 (`precision=bf16`, alternating with it): "
                            f"{1e3 * c['bf16_step_s']:.2f} ms, {c['bf16_speedup']:.2f}x." if "bf16_step_s" in c else ""))
        lines.append("")
    if "models" in r:
        lines += ["**Conv and autoregressive models.** Training steps on MNIST batches already on the device."]
        for name, mm in r["models"].items():
            lines.append(f"- {name}: {mm['examples_per_sec']:,.0f} examples/s at batch {mm['batch_size']} "
                         f"({mm['params']:,} parameters)" + (f"; {mm['config']}" if "config" in mm else "") + ".")
            if "full_kernel_examples_per_sec" in mm:
                lines.append(f"- {name}, side by side with every masked convolution computing its whole k x k "
                             f"kernel (the rows below the centre as zeros, as the textbook writes it): "
                             f"{mm['full_kernel_examples_per_sec']:,.0f} examples/s; vaerun's band of rows is "
                             f"{mm['speedup_vs_full_kernel']:.2f}x that (median of paired repeats).")
            if "nchw_examples_per_sec" in mm:
                lines.append(f"- {name}, side by side with its weights in PyTorch's default NCHW layout: "
                             f"{mm['nchw_examples_per_sec']:,.0f} examples/s; with the channels-last weights that "
                             f"`place()` gives the conv model on a CPU (oneDNN's NHWC kernels) it is "
                             f"{mm['speedup_vs_nchw']:.2f}x that (median of paired repeats).")
            if "eval_rows_per_sec" in mm:
                lines.append(f"- {name} evaluation: the ELBO of {mm['eval_examples']} validation images in one batch "
                             f"and K = 50 importance samples of {mm['eval_iw_examples']} of them "
                             f"({mm['eval_examples'] + 50 * mm['eval_iw_examples']:,} decoder rows): "
                             f"{mm['eval_rows_per_sec']:,.0f} rows/s decoded in pieces whose widest activation "
                             f"stays within 16 MB, {mm['eval_rows_per_sec_whole']:,.0f} rows/s in whole calls "
                             f"({mm['eval_speedup']:.2f}x, median of paired repeats).")
            if "sample_seconds" in mm:
                lines.append(f"- {name} sampling: {mm['sample_images']} images in {mm['sample_seconds']:.1f} s "
                             "(784 network passes for the whole batch, each through the cone of rows the pixel "
                             "depends on: every layer computes only the rows the layers after it read).")
            if "sample8_cone_seconds" in mm:
                lines.append(f"- {name} sampling side by side, 8 images: {mm['sample8_cone_seconds']:.1f} s through "
                             f"the cone, {mm['sample8_whole_seconds']:.1f} s with whole-image passes "
                             f"({mm['sample8_whole_seconds'] / mm['sample8_cone_seconds']:.2f}x; the same images).")
        lines.append("")
    if "logistic" in r:
        g = r["logistic"]
        lines += ["**The logistic likelihood.** The discretized logistic (`likelihood=logistic`, one component: "
                  "the default of the grey-level datasets) in vaerun's training loop, the conventional section's "
                  f"784-400-20 MLP ({g['params']:,} parameters: a mean and a log-scale per pixel) on MNIST grey "
                  "levels, batch 128: its output gradient written out "
                  "(`DiscretizedLogistic.log_prob_grad`, what the written-out pass uses) against the same step "
                  "taking it through autograd, two loops alternating epoch by epoch. Per repeat: "
                  + ", ".join(f"{a:,.0f} vs {b:,.0f}" for a, b in zip(g["examples_per_sec"]["written_out"],
                                                                     g["examples_per_sec"]["autograd"]))
                  + f" examples/s, {g['ratio']:.2f}x (median of paired epochs).", ""]
    if "iw" in r:
        i = r["iw"]
        lines += [f"**Importance-weighted NLL.** `iw_log_likelihood` with K = {i['k']} on {i['examples_timed']} MNIST "
                  f"test images (the MLP above), under `torch.inference_mode()`, samples decoded in chunks of 64 per "
                  f"example and reduced with `logsumexp`: {i['samples_per_sec']:,.0f} importance samples/s, so the "
                  f"full test set ({i['test_examples']:,} images) takes about "
                  f"{i['projected_full_test_s'] / 60:.1f} min (`vaerun eval RUN --iw-samples 5000 --split test`).", ""]
    if "end_to_end" in r:
        e = r["end_to_end"]
        lines += [f"**End to end.** The default `vaerun train` (shapes 28x28, MLP, 12 epochs) took {e['wall_s']:.0f} s "
                  f"wall time including Python and torch start-up ({e['training_wall_s']:.0f} s in the run itself). "
                  "`make train` on a fresh clone adds the one-off install of the runtime (about two minutes "
                  "here, dominated by torch's wheel).", ""]
    lines += ["## Reproduce", "", "```bash", "make bench                      # all sections, writes this page",
              "python benchmarks/bench.py --only conventional,overhead   # some sections",
              "python benchmarks/bench.py --quick --docs ''              # a smoke run", "```", ""]
    extra = path.parent / "performance_gpu.md"
    if extra.exists():
        lines += ["## GPU", "", f"See [{extra.name}]({extra.name}) for the CUDA figures "
                  "(`benchmarks/gpu_check.sh`).", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.environ.get("VAERUN_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--quick", action="store_true", help="fewer repeats and steps (a smoke run, not for the docs)")
    ap.add_argument("--only", help=f"comma-separated sections of {', '.join(SECTIONS)}")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results.json"))
    ap.add_argument("--docs", default=str(REPO / "docs" / "performance.md"), help="the page to write ('' = none)")
    ap.add_argument("--page-only", action="store_true", help="rewrite the docs page from --out, measure nothing")
    ap.add_argument("--denormal-worker", type=int, choices=(0, 1), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.denormal_worker is not None:
        return denormal_worker(a.data, bool(a.denormal_worker))
    from vaerun.train import flush_denormals

    # vaerun's default, set before any parallel operation so that every thread of the pool flushes: the
    # conventional loop in this process gets it too (it helps it: the ratio is not flattered by it)
    denormal_mode = flush_denormals(True)
    if a.page_only:
        write_page(json.loads(Path(a.out).read_text()), Path(a.docs))
        print(f"wrote {a.docs}")
        return 0
    if not (Path(a.data) / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        print(f"bench: MNIST not found under {a.data}; pass --data (torchvision layout)", file=sys.stderr)
        return 2
    only = a.only.split(",") if a.only else list(SECTIONS)
    bad = sorted(set(only) - set(SECTIONS))
    if bad:
        print(f"bench: unknown section(s) {bad}; choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    reps = 2 if a.quick else 3
    results: dict = {"machine": {**machine(), "denormals": denormal_mode},
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "quick": a.quick}
    previous = None
    if a.only and Path(a.out).exists():  # a partial rerun updates those sections of the last full run
        previous = json.loads(Path(a.out).read_text())
        results = {**{k: v for k, v in previous.items() if k in SECTIONS}, **results,
                   "updated_sections": {**previous.get("updated_sections", {}),
                                        **{k: results["started"] for k in only}}}
    t0 = time.time()
    runs = {"conventional": lambda: conventional(a.data, reps, 1),
            "denormals": lambda: denormals(a.data, reps),
            "overhead": lambda: overhead(a.data, 3 if a.quick else 5, 100 if a.quick else 300),
            "ceiling": lambda: ceiling(a.data, reps if a.quick else 5),
            "models": lambda: models(a.data, reps, a.quick),
            "logistic": lambda: logistic(a.data, reps),
            "iw": lambda: iw(a.data, reps, a.quick),
            "end_to_end": end_to_end}
    for name in SECTIONS:
        if name in only:
            t = time.time()
            print(f"[bench] {name} ...", flush=True)
            results[name] = runs[name]()
            print(f"[bench] {name} done in {time.time() - t:.0f}s", flush=True)
    results["seconds"] = round(time.time() - t0, 1)
    if previous is not None:  # keep the full run's own time stamp
        results["started"], results["seconds"] = previous.get("started"), previous.get("seconds")
    results["targets_met"] = verdict(results)
    Path(a.out).write_text(json.dumps(results, indent=2) + "\n")
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"vaerun benchmarks · {results['machine']['cpu']} · {results['machine']['cores']} cores · "
                    f"torch {results['machine']['torch']}")
    for col in ("benchmark", "measured", "ratio", "target"):
        t.add_column(col)
    for row in table_rows(results):
        t.add_row(*row)
    Console(width=130).print(t)
    print(f"targets met: {results['targets_met']}  ·  wrote {a.out}")
    if a.docs and not a.quick:
        write_page(results, Path(a.docs))
        print(f"wrote {a.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
