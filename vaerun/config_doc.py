"""docs/config.md from the typed schemas (config.py) and the option YAMLs (conf/<group>/*.yaml).

    python -m vaerun.config_doc docs/config.md      # write it
    python -m vaerun.config_doc --check docs/config.md   # exit 1 when it is stale

Every key with its type, its schema default and the meaning its schema comment gives; every
option of every group with the first line of its YAML's comment and the keys it sets. Nothing
is typed by hand: tests/test_docs.py fails when the page and the schemas disagree.
"""
from __future__ import annotations

import dataclasses
import enum
import inspect
import re
import sys
from pathlib import Path
from typing import Optional

import yaml

from vaerun import config

CONF = Path(__file__).resolve().parent / "conf"
SECTIONS = (("top-level keys", config.TrainConfig, ""), ("dataset", config.DatasetConfig, "dataset."),
            ("model", config.ModelConfig, "model."), ("likelihood", config.LikelihoodConfig, "likelihood."),
            ("schedule", config.ScheduleConfig, "schedule."), ("optimizer", config.OptimizerConfig, "optimizer."),
            ("diagnostics", config.DiagnosticsConfig, "diagnostics."), ("capacity", config.CapacityConfig, "capacity."),
            ("aggressive", config.AggressiveConfig, "aggressive."), ("pictures", config.PicturesConfig, "pictures."))


def field_comments(schema: type) -> dict[str, str]:
    """{field: its trailing comment in config.py}, continuation comment lines joined."""
    out: dict[str, str] = {}
    last: Optional[str] = None
    for line in inspect.getsource(schema).splitlines()[1:]:
        m = re.match(r"\s+(\w+)\s*:[^#]*?(?:#\s*(.*))?$", line)
        if m and not line.strip().startswith(("#", '"""', "@")):
            last = m.group(1)
            out[last] = (m.group(2) or "").strip()
        elif line.strip().startswith("#") and last is not None:
            out[last] = (out[last] + " " + line.strip()[1:].strip()).strip()
    return out


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
    else:
        return "—"
    if isinstance(value, enum.Enum):
        return f"`{value.value}`"
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def _type(f: dataclasses.Field) -> str:
    text = str(f.type).replace("typing.", "")   # config.py's annotations are strings (postponed evaluation)
    choices = getattr(config, text, None)
    if isinstance(choices, type) and issubclass(choices, enum.Enum):
        return " \\| ".join(f"`{c.value}`" for c in choices)
    return text.replace("Optional[", "").replace("]", "?").replace("List[", "list of ")


def keys_table(title: str, schema: type, prefix: str) -> list[str]:
    comments = field_comments(schema)
    lines = [f"## {title}", ""]
    doc = inspect.getdoc(schema) or ""
    if doc and not doc.startswith(schema.__name__ + "("):   # its own docstring, not the dataclass signature
        lines += [" ".join(doc.split()), ""]
    lines += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(schema):
        if f.type in {s.__name__ for _, s, _ in SECTIONS}:   # annotations are strings in config.py
            continue  # a nested group: its own section
        lines.append(f"| `{prefix}{f.name}` | {_type(f)} | {_default(f)} | {_cell(comments.get(f.name, ''))} |")
    return lines + [""]


def _first_sentence(text: str) -> str:
    """The first sentence of a YAML's leading comment block."""
    block = []
    for ln in text.splitlines():
        if not ln.startswith("#"):
            break
        if not ln.startswith("# @package"):
            block.append(ln.lstrip("#").strip())
    para = " ".join(block)
    end = re.search(r"(?<! al)(?<!e\.g)\.(\s|$)", para)   # not "et al." or "e.g."
    return para[:end.start() + 1] if end else para


def _cell(text: str) -> str:
    """Text for a Markdown table cell: its pipes escaped."""
    return text.replace("|", "\\|")


def _flat(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _flat(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def options_table(group: str) -> list[str]:
    """The options of a config group: ``group=name``, its YAML's first comment line, the keys it sets."""
    lines = [f"Options (`{group}=NAME`, from `vaerun/conf/{group}/`):", "", "| option | what it is | sets |",
             "| --- | --- | --- |"]
    for path in sorted((CONF / group).rglob("*.yaml")):
        name = path.relative_to(CONF / group).with_suffix("").as_posix()
        text = path.read_text()
        comment = _first_sentence(text)
        body = yaml.safe_load(text) or {}
        body.pop("defaults", None)
        body.pop("hydra", None)
        sets = ", ".join(f"`{k}={v}`" for k, v in _flat(body) if not (group != "experiment" and k == "name"))
        lines.append(f"| `{name}` | {_cell(comment)} | {_cell(sets)} |")
    return lines + [""]


def render() -> str:
    lines = ["# Configuration reference", "",
             "Generated by `python -m vaerun.config_doc docs/config.md` from the typed schemas "
             "(`vaerun/config.py`) and the option YAMLs (`vaerun/conf/`); do not edit by hand "
             "(`tests/test_docs.py` fails when it is stale). Each key is set on the command line as "
             "`key=value` (`vaerun train beta=4 model.latent_dim=32`); a group is chosen with `group=option`, "
             "whose YAML may set other defaults than the schema's (its keys are listed). "
             "[guide.md](guide.md) explains the groups in prose.", ""]
    for title, schema, prefix in SECTIONS:
        lines += keys_table(title, schema, prefix)
        group = prefix.rstrip(".")
        if group in config.GROUPS:
            lines += options_table(group)
    lines += ["## experiment", "", "Presets: a whole experiment in one word (`vaerun train experiment=NAME`), "
              "each overriding groups and keys.", ""] + options_table("experiment")
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    paths = [a for a in argv if a != "--check"]
    out = Path(paths[0] if paths else "docs/config.md")
    text = render()
    if check:
        if not out.exists() or out.read_text() != text:
            print(f"{out} is stale: run python -m vaerun.config_doc {out}", file=sys.stderr)
            return 1
        return 0
    out.write_text(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
