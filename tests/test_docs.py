"""The documentation stays true: docs/config.md is what the schemas generate, the README is a
front door of about 300 lines whose links resolve, and every `vaerun` command in its quick start
runs (a `train` line as `vaerun plan` with the same overrides; a command on a run folder on a tiny
trained run)."""
from __future__ import annotations

import dataclasses
import re
import shlex
import subprocess

import pytest

from conftest import REPO, SHARED_DATA, VAERUN, have_mnist

README = REPO / "README.md"


def test_config_md_is_generated_from_the_schemas():
    from vaerun import config_doc

    assert (REPO / "docs" / "config.md").read_text() == config_doc.render(), \
        "docs/config.md is stale: run python -m vaerun.config_doc docs/config.md"


def test_every_config_key_has_a_meaning():
    from vaerun import config_doc

    for _, schema, prefix in config_doc.SECTIONS:
        comments = config_doc.field_comments(schema)
        nested = {s.__name__ for _, s, _ in config_doc.SECTIONS}
        for f in dataclasses.fields(schema):
            if f.type not in nested:
                assert comments.get(f.name), f"{prefix}{f.name} has no comment in config.py (docs/config.md's meaning)"


def test_the_readme_is_a_front_door_whose_links_resolve():
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text) + re.findall(r'src="([^"]+)"', text):
        if not target.startswith("http"):
            assert (REPO / target).exists(), target
    for page in ("config", "metrics", "diagnose", "sweeps", "architecture", "guide", "results", "performance"):
        assert f"docs/{page}.md" in text and (REPO / "docs" / f"{page}.md").exists(), page


def quick_start_commands() -> list[str]:
    """Every `vaerun ...` command of the README's quick start: the bash blocks' lines and the
    backticked ones in its prose."""
    text = README.read_text()
    section = text[text.index("## Quick start"):text.index("\n## ", text.index("## Quick start") + 5)]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        commands += [line.split("  #")[0].strip() for line in block.splitlines() if line.startswith("vaerun ")]
    commands += re.findall(r"`(vaerun [^`]+)`", section.replace("\n", " "))
    return list(dict.fromkeys(" ".join(c.split()) for c in commands))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished one-epoch run on tiny shapes (7 steps), for the commands that take a run folder."""
    out = tmp_path_factory.mktemp("readme")
    args = ["dataset.num_examples=240", "dataset.val_size=40", "dataset.test_size=40", "dataset.image_size=16",
            "batch_size=32", "eval_batch_size=64", "epochs=1", "eval_every=1000", "sample_every=1000", "log_every=50",
            "num_samples=4", "model.hidden=[32]", "model.latent_dim=4", "progress=log", "diagnostics.iw_samples=4",
            "diagnostics.mi_examples=40", f"out_dir={out}"]
    res = subprocess.run([VAERUN, "train", *args], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return out, next(out.rglob("summary.json")).parent


def test_the_quick_start_lists_every_command_it_promises():
    words = {c.split()[1] for c in quick_start_commands()}
    assert {"train", "plan", "compare", "diagnose", "eval", "sample"} <= words
    assert any(" -m " in c for c in quick_start_commands()) and any("resume=" in c for c in quick_start_commands())


@pytest.mark.parametrize("command", quick_start_commands())
def test_every_quick_start_command_runs(command, tiny_run, monkeypatch, capsys):
    parent, run = tiny_run
    if "../shared/data" in command and not have_mnist():
        pytest.skip(f"MNIST not found under {SHARED_DATA}")
    command = re.sub(r"outputs/multirun/\S+", str(parent), command)
    command = re.sub(r"outputs/\d{4}-\d\d-\d\d/\S+", str(run), command)
    words = shlex.split(command)[1:]
    if words[0] == "train" and not any(w.startswith("resume=") for w in words):
        words = ["plan", *words[1:]]   # a train line: the plan of the same overrides (no training here)
    if words[0] == "train":            # a resume trains on, in its own process as the user's would
        res = subprocess.run([VAERUN, *words], capture_output=True, text=True, timeout=300, cwd=REPO)
        assert res.returncode == 0, (command, res.stdout[-2000:], res.stderr[-2000:])
        assert "Traceback" not in res.stdout + res.stderr
        return
    from vaerun.cli import main   # the rest in this process: the same dispatch, without a start-up each

    monkeypatch.chdir(REPO)
    assert main(words) == 0, (command, capsys.readouterr())
