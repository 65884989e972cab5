"""The run folder: its layout, and the only code that reads or writes it.

    <run>/
      .hydra/                 Hydra's own (config.yaml unresolved, hydra.yaml, overrides.yaml)
      config.yaml             the resolved config
      train.log               the log, as printed
      metrics.jsonl           one JSON object per logged event (train or val), append-only
      summary.json            status, final/best validation metrics, versions (atomic writes)
      checkpoints/last.pt     model, optimizer, scheduler, step, RNG states, config (atomic)
      checkpoints/best.pt     the same, at the best validation ELBO
      samples/step_XXXXXXX.png  prior samples
      recon/step_XXXXXXX.png    inputs (odd rows) above their reconstructions (even rows)
      curves.png              recon, KL and β against step
      tb/                     TensorBoard events
      eval.json               `vaerun eval` results, one entry per split/checkpoint/K
      diagnosis.json/.md      `vaerun diagnose` verdicts

All losses are nats per example; see README "The run folder" and docs/guide.md.
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterable, Optional

CHECKPOINT_FORMAT = "vaerun-checkpoint"
CHECKPOINT_VERSION = 1
STATUSES = ("running", "completed", "failed", "interrupted")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write) -> None:
    """Writes through a temporary file in the same folder, then renames over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the file gets the mode a plain open() would
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _jsonable(value: Any) -> Any:
    """Floats that are not finite become strings ("nan", "inf") so every line is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class RunFolder:
    """One run's folder. Creating the object touches nothing; writers create what they need."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    # ------------------------------------------------------------ layout
    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_file(self) -> Path:
        return self.path / "summary.json"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def tb_dir(self) -> Path:
        return self.path / "tb"

    @property
    def curves_file(self) -> Path:
        return self.path / "curves.png"

    def checkpoint_file(self, name: str = "last") -> Path:
        return self.checkpoint_dir / f"{name}.pt"

    PICTURES = ("sample", "sample_gaussian", "sample_gmm", "traverse", "interpolate", "latents")

    def picture_file(self, kind: str, checkpoint: str = "best") -> Path:
        """pictures/<kind>.png (from the best checkpoint) or pictures/<kind>_last.png."""
        if kind not in self.PICTURES:
            raise ValueError(f"picture kind must be one of {', '.join(self.PICTURES)}, not {kind!r}")
        return self.path / "pictures" / (f"{kind}.png" if checkpoint == "best" else f"{kind}_{checkpoint}.png")

    def pictures(self) -> dict[str, Path]:
        """The pictures from the best checkpoint that exist, by kind."""
        return {k: p for k in self.PICTURES if (p := self.picture_file(k)).is_file()}

    def grid_file(self, kind: str, step: int) -> Path:
        if kind not in ("samples", "recon"):
            raise ValueError(f"grid kind must be samples or recon, not {kind!r}")
        return self.path / kind / f"step_{step:07d}.png"

    def is_run(self) -> bool:
        return self.summary_file.exists() or self.metrics_file.exists()

    # ------------------------------------------------------------ writers
    def write_config(self, config: dict) -> None:
        from omegaconf import OmegaConf

        text = OmegaConf.to_yaml(OmegaConf.create(config))
        _atomic_write(self.config_file, lambda fh: fh.write(text.encode()))

    def write_overrides(self, overrides: list[str]) -> None:
        """The command line as Hydra records it (.hydra/overrides.yaml), for a run started from
        Python (vaerun.train_run), so that its diagnosis can print whole commands."""
        from omegaconf import OmegaConf

        (self.path / ".hydra").mkdir(parents=True, exist_ok=True)
        text = OmegaConf.to_yaml(OmegaConf.create(list(overrides)))
        _atomic_write(self.path / ".hydra" / "overrides.yaml", lambda fh: fh.write(text.encode()))

    def append_metrics(self, record: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_file, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(_jsonable(record)) + "\n")

    def write_summary(self, summary: dict) -> None:
        if summary.get("status") not in STATUSES:
            raise ValueError(f"summary status must be one of {STATUSES}")
        text = json.dumps(_jsonable(summary), indent=2)
        _atomic_write(self.summary_file, lambda fh: fh.write(text.encode()))

    def write_report(self, name: str, content) -> Path:
        """eval.json, diagnosis.json (dicts) or diagnosis.md (text) in the run folder, atomically."""
        if name not in ("eval.json", "diagnosis.json", "diagnosis.md"):
            raise ValueError(f"unknown report {name!r}")
        text = content if isinstance(content, str) else json.dumps(_jsonable(content), indent=2)
        _atomic_write(self.path / name, lambda fh: fh.write(text.encode()))
        return self.path / name

    def read_report(self, name: str) -> dict:
        path = self.path / name
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}

    def save_checkpoint(self, state: dict, name: str = "last") -> Path:
        """``state`` must hold only tensors and plain containers (weights_only loading)."""
        import torch

        path = self.checkpoint_file(name)
        payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
        _atomic_write(path, lambda fh: torch.save(payload, fh))
        return path

    def save_grid(self, kind: str, step: int, images, nrow: int):
        """images (N, C, H, W) in [0, 1] -> one PNG grid, ``nrow`` images per row.
        Returns the grid as a (3, H', W') float tensor (for TensorBoard)."""
        import torch
        from PIL import Image

        grid = image_grid(images.detach().float().clamp(0, 1).cpu(), nrow=nrow)
        path = self.grid_file(kind, step)
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = grid.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(1, 2, 0)  # (H', W', C)
        Image.fromarray(pixels.squeeze(-1).numpy() if pixels.shape[-1] == 1 else pixels.numpy()).save(path)
        return grid

    def save_figure(self, fig, path: Optional[Path] = None) -> Path:
        """A matplotlib figure as PNG: curves.png by default, else ``path`` (folders created;
        written to a temporary file first, so a reader never sees half a picture)."""
        path = Path(path or self.curves_file)
        _atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110, bbox_inches="tight"))
        return path

    def tb_writer(self, purge_step: Optional[int] = None):
        """TensorBoard writer on tb/; ``purge_step`` drops events from that step on (resume)."""
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=str(self.tb_dir), purge_step=purge_step)

    # ------------------------------------------------------------ readers
    def read_metrics(self, split: Optional[str] = None) -> list[dict]:
        """All records (or one split's); a torn last line (a crash mid-write) is skipped."""
        if not self.metrics_file.exists():
            return []
        records = []
        for line in self.metrics_file.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if split is None or rec.get("split") == split:
                records.append(rec)
        return records

    def read_summary(self) -> dict:
        return json.loads(self.summary_file.read_text(encoding="utf-8")) if self.summary_file.exists() else {}

    def read_config(self) -> dict:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(OmegaConf.load(self.config_file))

    def read_overrides(self) -> list[str]:
        """The command-line overrides Hydra recorded for this run (.hydra/overrides.yaml), or []."""
        path = self.path / ".hydra" / "overrides.yaml"
        if not path.exists():
            return []
        from omegaconf import OmegaConf

        return [str(o) for o in OmegaConf.to_container(OmegaConf.load(path))]

    def experiment(self) -> Optional[str]:
        """The ``experiment=`` preset the run was started with, or None."""
        return next((o.split("=", 1)[1] for o in self.read_overrides() if o.split("=", 1)[0] in
                     ("experiment", "+experiment")), None)

    def load_checkpoint(self, name: str = "last", map_location: Any = "cpu") -> dict:
        return load_checkpoint_file(self.checkpoint_file(name), map_location)

    def truncate_metrics(self, step: int) -> int:
        """Drops train/val records after ``step`` (logged after the checkpoint being resumed, so
        they will be logged again); events are kept. Atomic. Returns how many were dropped."""
        if not self.metrics_file.exists():
            return 0
        keep, dropped = [], 0
        for line in self.metrics_file.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1  # a torn line from a crash mid-write
                continue
            if rec.get("split") in ("train", "val") and rec.get("step", 0) > step:
                dropped += 1
                continue
            keep.append(line + "\n")
        _atomic_write(self.metrics_file, lambda fh: fh.write("".join(keep).encode()))
        return dropped

    def grids(self, kind: str) -> list[Path]:
        return sorted((self.path / kind).glob("step_*.png"))


def image_grid(images, nrow: int, padding: int = 2, pad_value: float = 0.5):
    """(N, C, H, W) -> one (C, H', W') image: ``nrow`` images per row, separated by ``padding``
    pixels of ``pad_value``."""
    import torch

    n, c, h, w = images.shape
    rows = -(-n // nrow)
    grid = torch.full((c, rows * (h + padding) + padding, nrow * (w + padding) + padding), pad_value)
    for i in range(n):
        r, k = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + k * (w + padding)
        grid[:, top:top + h, left:left + w] = images[i]
    return grid


def model_weights(checkpoint: dict) -> dict:
    """The weights to evaluate from a loaded checkpoint: the moving average when the run kept
    one (optimizer.ema), else the trained weights."""
    return checkpoint["ema_model"] if "ema_model" in checkpoint else checkpoint["model"]


def load_model_weights(model, weights: dict, source: str | os.PathLike) -> None:
    """``model.load_state_dict(weights)``, where a checkpoint that does not fit the model its run's
    config builds (written by another vaerun version, or config.yaml edited since) is a
    CheckpointError naming the file, the first tensors that differ and the fix."""
    from vaerun.errors import CheckpointError

    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    shapes = [f"{k}: {list(weights[k].shape)} in the file, {list(own[k].shape)} in the model" for k in own
              if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        what = shapes[:2] + [f"{k} missing from the file" for k in missing[:2]] + \
            [f"{k} in the file, not in the model" for k in unexpected[:2]]
        more = len(shapes) + len(missing) + len(unexpected) - len(what)
        raise CheckpointError(
            f"{source} does not fit the model that the run's config.yaml builds ({'; '.join(what)}"
            f"{f'; {more} more' if more > 0 else ''}): it was written by another version of vaerun, or the "
            f"config was edited since (the logistic likelihood with likelihood.mixtures=1 has 2 parameters per "
            f"pixel since 2026-11-28, 3 before).\n  fix: open the run with the vaerun version that wrote it, "
            f"or train it again")
    model.load_state_dict(weights)


def load_checkpoint_file(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Loads a vaerun checkpoint with ``weights_only=True`` (a pickle that would run code is
    refused). Every failure is a CheckpointError naming the file and what to do."""
    import pickle

    import torch

    from vaerun.errors import CheckpointError

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}.\n  fix: pass a run folder that has checkpoints/last.pt")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).split("\n\n")[0].replace("\n", " ")
        if "Weights only load failed" in str(err):
            raise CheckpointError(f"refused to load {path}: it holds objects that would run code when unpickled "
                                  f"({reason[:300]}).\n  fix: only load checkpoints written by vaerun; if you trust "
                                  f"this file, convert it yourself") from err
        raise CheckpointError(f"{path} is not a readable checkpoint ({reason[:300]}).\n"
                              f"  fix: it is corrupted; resume from another checkpoint or start a new run") from err
    except Exception as err:  # truncated zip, random bytes, I/O errors
        raise CheckpointError(f"{path} is not a readable checkpoint: it is truncated or corrupted "
                              f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}).\n"
                              f"  fix: resume from another checkpoint (e.g. best.pt) or start a new run") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is a PyTorch file but not a vaerun checkpoint (no 'format: {CHECKPOINT_FORMAT}').\n"
                              f"  fix: pass a checkpoint written by vaerun train")
    return state


def find_runs(paths: Iterable[str | os.PathLike]) -> list[RunFolder]:
    """Run folders at or below each path (a run, a sweep folder or any parent)."""
    found: list[RunFolder] = []
    for p in paths:
        p = Path(p)
        candidates = [p] if (p / "summary.json").exists() else sorted(x.parent for x in p.rglob("summary.json"))
        found += [RunFolder(c) for c in candidates]
    return found


def not_a_run(path: str | os.PathLike, example: str) -> str:
    """Why ``path`` is not a run folder and what to pass instead, for an error message: the path
    is missing, is a sweep or parent folder (its runs named), lies inside a run, or is something
    else. ``example`` shows the argument as the user wrote it, with {} for the path."""
    p = Path(path)
    if not p.exists():
        return f"{path} does not exist.\n  fix: pass a run folder, e.g. {example.format('outputs/<date>/<time>')}"
    if p.is_dir():
        # a sweep's runs lie 1 deep, outputs/multirun's 4: no deeper walk (a home folder could be huge)
        inner = sorted({x.parent for depth in range(1, 5) for x in p.glob("*/" * depth + "summary.json")})
        if inner:
            names = ", ".join(map(str, inner[:3])) + (f" and {len(inner) - 3} more" if len(inner) > 3 else "")
            return (f"{path} is not a run folder but holds {len(inner)} run{'s' if len(inner) > 1 else ''} "
                    f"({names}).\n  fix: pass one of them, e.g. {example.format(inner[0])}; "
                    f"`vaerun compare {path}` shows them all side by side")
    for parent in p.resolve().parents:
        if (parent / "config.yaml").is_file() and (parent / "summary.json").is_file():
            return (f"{path} lies inside the run folder {parent}.\n  fix: pass the run folder itself, "
                    f"e.g. {example.format(parent)}")
    return (f"{path} is not a vaerun run folder (no config.yaml).\n  fix: pass a folder written by vaerun "
            f"train, e.g. {example.format('outputs/<date>/<time>')}")


def provenance() -> dict:
    """Versions of Python, torch and vaerun, and the git commit of vaerun's source tree if any."""
    import torch

    from vaerun.version import __version__

    info = {"python": platform.python_version(), "torch": torch.__version__, "vaerun": __version__,
            "platform": platform.platform()}
    try:
        src = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5)
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
            dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain"], capture_output=True,
                                   text=True, timeout=5)
            info["git_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info
