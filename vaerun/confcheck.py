"""Checks a `vaerun train` command line before Hydra runs it, and turns Hydra/OmegaConf
composition errors into one short message naming the key, the value and the fix."""
from __future__ import annotations

import difflib
import math
import re
from importlib import resources
from typing import Optional

from omegaconf import OmegaConf

from vaerun.config import GROUPS, validate
from vaerun.errors import ConfigError, VaerunError

# Hydra's own flags; with any of these the command line is Hydra's business, not ours.
_HYDRA_FLAGS = {"-m", "--multirun", "-h", "--help", "--hydra-help", "-i", "--info", "-c", "--cfg", "-p",
                "--package", "-sc", "--shell-completion", "-cp", "--config-path", "-cn", "--config-name",
                "-cd", "--config-dir", "--experimental-rerun", "--resolve"}


def available_options(group: str) -> list[str]:
    """The options of a config group: the YAML files in vaerun/conf/<group>/, with subfolders
    (e.g. experiment: collapse/ar_beta1)."""
    root = resources.files("vaerun.conf") / group

    def walk(folder, prefix: str) -> list[str]:
        out = []
        for p in folder.iterdir():
            if p.is_dir() and not p.name.startswith("_"):
                out += walk(p, f"{prefix}{p.name}/")
            elif p.name.endswith(".yaml"):
                out.append(prefix + p.name[:-5])
        return out

    return sorted(walk(root, "")) if root.is_dir() else []


def should_check(args: list[str]) -> bool:
    return not any(a.split("=")[0] in _HYDRA_FLAGS for a in args)


def _override_value(overrides: list[str], key: str) -> Optional[str]:
    for o in overrides:
        k, _, v = o.lstrip("+~").partition("=")
        if k == key:
            return v
    return None


def _suggest(word: str, choices: list[str]) -> Optional[str]:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return close[0] if close else None


def _accepted_elsewhere(value: str, group: str, defaults) -> list[str]:
    """Where else ``value`` is a valid choice: another config group's option (``model=gaussian``
    means ``likelihood=gaussian``) or the value of a key with fixed choices (``schedule=cosine``
    means ``optimizer.lr_scheduler=cosine``)."""
    from enum import Enum

    from omegaconf import DictConfig

    found = [f"{g}={value}" for g in (*GROUPS, "experiment") if g != group and value in available_options(g)]

    def walk(node, prefix: str) -> None:
        for k in node.keys():
            if k == "hydra":
                continue
            v = node[k]
            if isinstance(v, DictConfig):
                walk(v, f"{prefix}{k}.")
            elif isinstance(v, Enum) and value in type(v).__members__ and not (k == "name" and prefix[:-1] in GROUPS):
                found.append(f"{prefix}{k}={value}")

    if defaults is not None:
        walk(defaults, "")
    return found


def explain(exc: BaseException, overrides: list[str], defaults) -> str:
    """A one-screen message for a composition error (no traceback)."""
    cause = exc.__cause__ or exc.__context__ or exc
    text = str(exc)
    missing = re.search(r"Could not find '([^'/]+)/([^']+)'", text)
    if missing:
        group, option = missing.group(1), missing.group(2)
        options = available_options(group) if group in (*GROUPS, "experiment") else []
        close, elsewhere = _suggest(option, options), _accepted_elsewhere(option, group, defaults)
        fix = f"{group}={close or (options[0] if options else '...')}"
        if elsewhere:  # the option of another group or key: that first, a near miss in this group second
            fix = f"{' or '.join(elsewhere)} ('{option}' is a choice there)" + (f", or {group}={close}" if close else "")
        return (f"{group}={option}: there is no {group} option '{option}'. Available: {', '.join(options)}.\n"
                f"  fix: {fix}")
    token = re.search(r"(?:token recognition error at:|mismatched input|extraneous input) '(.+?)'", text)
    if token:  # a character Hydra's override grammar does not take bare: quote the value
        bad = next((o for o in overrides if token.group(1) in o.partition("=")[2]), None)
        if bad:
            key, _, value = bad.partition("=")
            return (f"{bad}: Hydra's override syntax does not take '{token.group(1)}' in an unquoted value.\n"
                    f"  fix: quote the value for Hydra (and the whole for the shell): '{key}=\"{value}\"'")
    twice = re.search(r"Multiple values for ([\w/]+)", text)
    if twice:  # +experiment=x: the group is already in the defaults, so it is chosen, not added
        group = twice.group(1)
        value = _override_value(overrides, group)
        return (f"+{group}={value}: {group} is a config group vaerun already has, so it is chosen, not added.\n"
                f"  fix: {group}={value} (without '+')")
    full_key = getattr(cause, "full_key", None)
    first = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    if full_key and "Could not override" in text or type(cause).__name__ in ("ConfigAttributeError", "ConfigKeyError"):
        key = full_key or re.search(r"'([^']+)'", text).group(1)
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(defaults, parent) if parent else defaults
        valid = sorted(k for k in node.keys() if k != "hydra") if node is not None else []
        best = _suggest(leaf, valid)
        value = _override_value(overrides, key)
        fix = f"{parent + '.' if parent else ''}{best}={value}" if best else "check the spelling"
        return (f"{key}={value}: there is no config key '{key}'. Valid keys{' under ' + parent if parent else ''}: "
                f"{', '.join(valid)}.\n  fix: {fix} (`vaerun train --help` lists every key and its default)")
    if type(cause).__name__ == "MissingMandatoryValue":
        return f"{full_key}=???: this key has no value and needs one.\n  fix: pass {full_key}=<value>"
    if full_key:  # a wrong type or an invalid choice
        value = _override_value(overrides, full_key)
        default = OmegaConf.select(defaults, full_key, default=None)
        choices = re.search(r"expected one of \[([^\]]*)\]", first)
        fix = (f"use one of: {choices.group(1)}" if choices else f"e.g. {full_key}={default} (the default)")
        return f"{full_key}={value}: {first}.\n  fix: {fix}"
    return f"{first}\n  fix: check the command line (`vaerun train --help` lists groups, options and keys)"


def check_writable(folder: str) -> Optional[str]:
    """None when run folders can be created under ``folder``; else the message to print."""
    import os
    import tempfile

    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        return (f"out_dir={folder}: run folders cannot be written there ({type(err).__name__}: "
                f"{err.strerror or err}).\n  fix: pass out_dir=<a writable folder>, e.g. out_dir=$HOME/vaerun-outputs")
    return None


_RESUME_MAY_CHANGE = {"resume", "progress", "device"}
RESUME_LENGTH = ("epochs", "max_steps")  # a resumed run may be made longer (or shorter, down to its step)


def override_key(override: str) -> str:
    """The key (or group) an override sets: ``+model.hidden=[8]`` -> ``model.hidden``."""
    return override.lstrip("+~").split("=")[0]


def without_hydra(overrides: list[str]) -> list[str]:
    """The overrides but Hydra's own (``hydra.*``, ``hydra/launcher=...``): not vaerun's to check."""
    return [o for o in overrides if not override_key(o).startswith(("hydra.", "hydra/"))]


def check_resume(folder: str, overrides: list[str], cfg) -> Optional[str]:
    """A resumed run keeps its own config, but for its length; the folder must hold a config and a
    checkpoint. ``cfg``: the composed config, whose ``epochs``/``max_steps`` the overrides set
    (``overrides`` without Hydra's own)."""
    from pathlib import Path

    changed = [o for o in overrides if override_key(o) not in _RESUME_MAY_CHANGE | set(RESUME_LENGTH)]
    if changed:
        return (f"{changed[0]}: a resumed run continues with its own config (its config.yaml), so it cannot be "
                f"changed (only its length: epochs, max_steps).\n  fix: drop {' '.join(changed)}, or start a new run")
    run = Path(folder)
    if not (run / "config.yaml").is_file():
        from vaerun.runs import not_a_run

        return f"resume={not_a_run(folder, 'resume={}')}"
    if not (run / "checkpoints" / "last.pt").is_file():
        return (f"resume={folder}: the run has no checkpoint yet (checkpoints/last.pt); it stopped before its "
                f"first step.\n  fix: start it again as a new run")
    given = {override_key(o) for o in overrides} & set(RESUME_LENGTH)
    if given:
        problem = _check_new_length(run, given, cfg.epochs, cfg.max_steps)
        if problem:
            return problem
    return check_writable(folder)


def resumed_length(saved: dict, given: set, epochs: int, max_steps: Optional[int]) -> dict:
    """The ``epochs`` and ``max_steps`` of a resumed run given ``given`` of them anew: ``epochs``
    alone replaces a ``max_steps`` the run set (which would otherwise override it)."""
    out = {"epochs": saved.get("epochs"), "max_steps": saved.get("max_steps")}
    if "epochs" in given:
        out["epochs"] = epochs
        if "max_steps" not in given:
            out["max_steps"] = None
    if "max_steps" in given:
        out["max_steps"] = max_steps
    return out


def drawn_over_length(config: dict) -> list[str]:
    """The settings of a resolved config drawn over the run's whole length (cyclical β, a cosine
    learning rate): such a run cannot be resumed to another length."""
    drawn = ["schedule=cyclical"] if (config.get("schedule") or {}).get("name") == "cyclical" else []
    return drawn + (["optimizer.lr_scheduler=cosine"] if (config.get("optimizer") or {}).get("lr_scheduler") == "cosine"
                    else [])


def _check_new_length(run, given: set, epochs: int, max_steps: Optional[int]) -> Optional[str]:
    """A new length must not end before the checkpoint's step, and cannot change a schedule drawn
    over the run's length (cyclical β, a cosine learning rate): the steps already taken would
    belong to another schedule."""
    import json

    from vaerun.runs import load_checkpoint_file

    saved = OmegaConf.to_container(OmegaConf.load(run / "config.yaml"))
    summary = run / "summary.json"
    per_epoch = json.loads(summary.read_text()).get("steps_per_epoch") if summary.is_file() else None
    if not per_epoch:
        return (f"resume={run}: its summary.json has no steps_per_epoch, so a new length cannot be checked.\n"
                f"  fix: start a new run")
    new = resumed_length(saved, given, epochs, max_steps)

    def total(c: dict) -> int:
        return c["max_steps"] if c["max_steps"] is not None else c["epochs"] * per_epoch

    old_total, new_total = total(saved), total(new)
    asked = " ".join(f"{k}={new[k] if new[k] is not None else 'null'}" for k in RESUME_LENGTH if k in given)
    if new_total != old_total:
        drawn = drawn_over_length(saved)
        if drawn:
            return (f"{asked}: the run's {' and '.join(drawn)} is drawn over its length ({old_total} steps), so at "
                    f"{new_total} steps every step it has taken would have had another value.\n"
                    f"  fix: start a new run with {asked}, or resume it at its own length")
    try:
        step = load_checkpoint_file(run / "checkpoints" / "last.pt")["loop"]["step"]
    except VaerunError as err:
        return str(err)
    if new_total < step:
        return (f"{asked}: {new_total} steps, but the run has trained {step} (checkpoints/last.pt).\n"
                f"  fix: a length of at least {step} steps (max_steps={step} or more)")
    return None


_ABSENT = object()


def _added_key(overrides: list[str]) -> Optional[str]:
    """A ``+key=value`` (or ``++``) that adds a key vaerun's config does not have: Hydra takes it,
    nothing reads it, and the run would silently train without it (``+optimizer.lr_sheduler=...``).
    Config groups (``+experiment=...``, ``+experiment/collapse=...``) are left to Hydra."""
    from hydra import compose

    for o in overrides:
        if not o.startswith("+"):
            continue
        key = override_key(o)
        if "/" in key or key in (*GROUPS, "experiment"):
            continue
        base = compose("train", overrides=[x for x in overrides if x is not o])
        if OmegaConf.select(base, key, default=_ABSENT) is not _ABSENT:
            continue  # ++key=value on a key that exists: an ordinary override
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(base, parent, default=None) if parent else base
        valid = sorted(k for k in node.keys() if k != "hydra") if OmegaConf.is_dict(node) else []
        best = _suggest(leaf, valid)
        value = _override_value(overrides, key)
        fix = (f"{parent + '.' if parent else ''}{best}={value}" if best else f"drop {o}") + \
            " (`vaerun train --help` lists every key and its default)"
        where = f" Valid keys under {parent}: {', '.join(valid)}." if parent and valid else ""
        return (f"{o}: vaerun has no config key '{key}'; '+' would add it, and nothing reads it.{where}\n"
                f"  fix: {fix}")
    return None


def sweep_axes(overrides: list[str]) -> list[list[str]]:
    """Each key's values as Hydra's basic sweeper expands them (one entry for an unswept key), in
    the order the keys first appear; a key given again keeps its place and takes the later values."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    axes: dict[str, list[str]] = {}
    for o in OverridesParser.create().parse_overrides(overrides):
        axes[o.get_key_element()] = ([f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
                                     if o.is_sweep_override() else [o.input_line])
    return list(axes.values())


def declared_sweep(overrides: list[str]) -> list[str]:
    """The sweep the composed config declares itself (``hydra.sweeper.params``, as the
    ``shapes_beta_sweep`` preset does) as overrides; Hydra's basic sweeper puts them before the
    command line's, which override them key by key. None when the overrides do not compose (the
    check says why)."""
    from hydra import compose, initialize_config_module

    from vaerun.config import register_configs

    register_configs()
    try:
        with initialize_config_module("vaerun.conf", version_base="1.3"):
            cfg = compose("train", overrides=without_hydra(overrides), return_hydra_config=True)
    except Exception:
        return []
    return [f"{k}={v}" for k, v in (cfg.hydra.sweeper.get("params") or {}).items()]


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The jobs of a basic sweep, in Hydra's order (the product of every swept key's values, the
    last key fastest): each job's overrides as it will see them."""
    import itertools

    return [list(job) for job in itertools.product(*sweep_axes(overrides))]


def check_sweep(overrides: list[str]) -> Optional[str]:
    """``check`` for the jobs of a sweep before any starts, so that a bad value among the swept
    ones (``beta=0.5,-1``) does not surface only when its job's turn comes, after the jobs before
    it have trained. Composing a config takes Hydra a few hundred ms, so not every job of the
    product is composed: the first one, and for each swept key each of its other values with the
    other keys at their first (every value checked once; 1 + Σ(values − 1) jobs instead of Π)."""
    from hydra import initialize_config_module

    from vaerun.config import register_configs

    overrides = without_hydra(overrides)
    for o in overrides:
        try:
            sweep_axes([o])
        except Exception as err:  # a syntax error, in the parser's words
            return f"{o}: {str(err).splitlines()[0]}.\n  fix: check the sweep syntax, e.g. beta=0.5,1,2 or seed=range(3)"
    overrides = declared_sweep(overrides) + overrides
    axes = sweep_axes(overrides)
    sizes = [len(a) for a in axes]
    picks = [[0] * len(axes)] + [[v if b == a else 0 for b in range(len(axes))]
                                 for a in range(len(axes)) for v in range(1, sizes[a])]
    register_configs()
    with initialize_config_module("vaerun.conf", version_base="1.3"):
        for pick in picks:
            job = [axes[a][v] for a, v in enumerate(pick)]
            problem = _check_composed(job)
            if problem:
                number = sum(v * math.prod(sizes[a + 1:]) for a, v in enumerate(pick))  # Hydra's job number
                values = " ".join(o for o in job if o not in overrides) or " ".join(job)  # the swept values
                return f"sweep job {number} ({values}), before any job started: {problem}"
    return None


def compose_config(overrides: list[str]):
    """The composed config (DictConfig) `vaerun train <overrides>` runs; ``check`` it first."""
    from hydra import compose, initialize_config_module

    from vaerun.config import register_configs

    register_configs()
    with initialize_config_module("vaerun.conf", version_base="1.3"):
        return compose("train", overrides=overrides)


def check(overrides: list[str]) -> Optional[str]:
    """None when the overrides compose into a valid config; otherwise the message to print."""
    from hydra import initialize_config_module

    from vaerun.config import register_configs

    register_configs()  # idempotent: the schemas the option YAMLs extend
    with initialize_config_module("vaerun.conf", version_base="1.3"):
        return _check_composed(overrides)


def _check_composed(overrides: list[str]) -> Optional[str]:
    """``check`` inside an initialized Hydra context (a sweep checks all its jobs in one)."""
    from hydra import compose

    overrides = without_hydra(overrides)
    try:
        cfg = compose("train", overrides=overrides)
        typed = OmegaConf.to_object(cfg)
        validate(typed)
        if typed.device.value in ("cuda", "mps"):  # asked for explicitly: is it there? (torch only then)
            from vaerun.train import resolve_device

            resolve_device(typed.device.value)
        added = _added_key(overrides)
        if added:
            return added
    except ConfigError as err:
        return str(err)
    except Exception as err:  # Hydra/OmegaConf composition errors of every kind
        return explain(err, overrides, compose("train"))
    if cfg.resume:
        return check_resume(cfg.resume, overrides, cfg)
    return check_writable(cfg.out_dir)
