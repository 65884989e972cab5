"""Command-line override strings (``key=value``) before Hydra reads them: the one piece of
argv handling that both `vaerun train` (cli.py) and `vaerun plan` (commands.py) need."""
from __future__ import annotations

import os
import re

PATH_KEYS = ("dataset.path", "dataset.root", "out_dir", "resume")
_HYDRA_PLAIN = re.compile(r"[\w/.\-:@+%]*")  # a value Hydra's override grammar reads without quotes


def expand_home(args: list[str]) -> list[str]:
    """``~`` at the start of a path key's value (``dataset.path=~/photos``) expanded to the home
    folder: the shell leaves it alone after ``key=`` and Hydra's override grammar rejects it
    ("token recognition error at: '~'"). A quoted value (``'dataset.path="~/photos"'``) too; the
    result is quoted for Hydra when it holds characters its grammar would not take bare."""
    out = []
    for a in args:
        key, eq, value = a.partition("=")
        if eq and key.lstrip("+~") in PATH_KEYS:
            quoted = len(value) >= 2 and value[0] in "'\"" and value[-1] == value[0]
            raw = value[1:-1] if quoted else value
            if raw.startswith("~"):
                raw = os.path.expanduser(raw)
                value = raw if _HYDRA_PLAIN.fullmatch(raw) else '"' + raw.replace("\\", "\\\\").replace('"', '\\"') + '"'
                a = f"{key}={value}"
        out.append(a)
    return out
