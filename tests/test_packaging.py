"""What a user expects of the package around the code: licence, CLI conventions, installs."""

import argparse
import os
import re
import subprocess
import sys

import pytest

from gpu_lstm import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(name):
    with open(os.path.join(ROOT, name)) as f:
        return f.read()


def test_license_file_matches_pyproject():
    assert 'license = { text = "MIT" }' in _read("pyproject.toml")
    assert _read("LICENSE").startswith("MIT License")


def test_version_flag(capsys):
    import gpu_lstm
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"gpu-lstm {gpu_lstm.__version__}"


def _subparsers():
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_option_help_shows_its_default():
    for name, sub in _subparsers().items():
        text = sub.format_help()
        for action in sub._actions:
            if not action.option_strings or action.dest == "help":
                continue
            helptext = sub.formatter_class(prog="x")._get_help_string(action)
            assert "default" in helptext, f"{name} {action.option_strings}: {helptext!r}"
            assert "default" in " ".join(text.split()).split(action.option_strings[-1], 1)[1]


def test_one_name_per_concept_across_subcommands():
    """Sizes are -H/--hidden, -B/--batch, -T/--seq-len everywhere; --steps means optimizer steps."""
    subs = _subparsers()
    for name in ("check", "profile", "train"):
        opts = {o for a in subs[name]._actions for o in a.option_strings}
        assert {"-H", "--hidden", "-B", "--batch", "-T", "--seq-len"} <= opts, name
    assert "--steps" not in {o for a in subs["check"]._actions for o in a.option_strings}


def test_progress_goes_to_stderr_and_results_to_stdout(tmp_path):
    r = subprocess.run([sys.executable, "-m", "gpu_lstm", "train", "adding", "--steps", "4", "-T", "4",
                        "-B", "4", "-H", "4", "--log-every", "2", "--device", "cpu", "--out", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "tokens/s" in r.stderr and "step 4/4" in r.stderr
    assert "step 4/4" not in r.stdout and r.stdout.startswith("adding problem (T=4) on cpu: held-out MSE")


def test_demo_does_not_install_the_test_extra():
    make = _read("Makefile")
    stamp_recipe = re.search(r"^\$\(STAMP\):.*?\n((?:\t.*\n)+)", make, re.M).group(1)
    assert "test" not in stamp_recipe and ".[plot]" in stamp_recipe
    assert re.search(r"^demo: \$\(STAMP\)$", make, re.M)
    assert re.search(r"^test: \$\(TEST_STAMP\)( torch)?$", make, re.M)   # torch: a local CPU wheel only


def test_project_files_speak_of_a_gpu_machine_only():
    """Docs and scripts describe running on any GPU machine, not any particular way of borrowing one."""
    # The words are assembled so that this file does not itself contain them.
    words = ["device" + " tool", "le" + "nt", "le" + "nding", "ses" + "sion", "farm" + "-bench", "device" + " call"]
    banned = re.compile(r"\b(" + "|".join(words) + r")\b", re.I)
    hits = []
    for folder in ("docs", "benchmarks", "gpu_lstm", "tests", ".ci"):
        for dirpath, _, names in os.walk(os.path.join(ROOT, folder)):
            for n in names:
                if n.endswith((".md", ".py", ".sh", ".yml", ".toml")) or n == "run":
                    path = os.path.join(dirpath, n)
                    if path == os.path.abspath(__file__):
                        continue
                    with open(path, errors="replace") as f:
                        for i, line in enumerate(f, 1):
                            if banned.search(line):
                                hits.append(f"{os.path.relpath(path, ROOT)}:{i}: {line.strip()}")
    for n in ("README.md", "Makefile", "pyproject.toml", "mkdocs.yml"):
        for i, line in enumerate(_read(n).splitlines(), 1):
            if banned.search(line):
                hits.append(f"{n}:{i}: {line.strip()}")
    assert not hits, "\n".join(hits)
