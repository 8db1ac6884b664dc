"""The API reference shows the defaults the code has (docs/hooks/docstring_defaults.py).

Needs griffe (the documentation extra, ``make docs``); without it these tests skip, and the same
check still runs in every documentation build, where it fails the build.
"""
import importlib.util
import pathlib
import textwrap

import pytest

griffe = pytest.importorskip("griffe")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _hook():
    spec = importlib.util.spec_from_file_location("docstring_defaults",
                                                  ROOT / "docs" / "hooks" / "docstring_defaults.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_reference_shows_every_default_the_code_has():
    assert _hook().default_mismatches(search_paths=[str(ROOT)]) == []


def _package(tmp_path, source):
    pkg = tmp_path / "docpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent(source))
    return _hook().default_mismatches("docpkg", search_paths=[str(tmp_path)])


def test_a_grouped_entry_with_different_defaults_is_reported(tmp_path):
    problems = _package(tmp_path, '''
        def run(hidden=64, layers=1):
            """Run.

            Parameters
            ----------
            hidden, layers : int
                Sizes.
            """
    ''')
    assert len(problems) == 1
    assert "docpkg.run" in problems[0] and "'layers' with default 64" in problems[0]
    assert "default 1" in problems[0]


def test_a_choice_set_on_a_required_argument_is_reported(tmp_path):
    problems = _package(tmp_path, '''
        class Maker:
            """Make.

            Parameters
            ----------
            name : {'adam', 'sgd'}
            """

            def __init__(self, name):
                self.name = name
    ''')
    assert len(problems) == 1
    assert "docpkg.Maker" in problems[0] and "'name' with default 'adam'" in problems[0]


def test_a_documented_name_the_signature_lacks_is_reported(tmp_path):
    problems = _package(tmp_path, '''
        def run(steps=10):
            """Run.

            Parameters
            ----------
            step : int
            """
    ''')
    assert problems == ["docpkg.run: documents 'step', which its signature does not have"]


def test_correct_entries_pass_and_private_names_are_not_checked(tmp_path):
    assert _package(tmp_path, '''
        def run(hidden=64, layers=64, *, name="adam", **kwargs):
            """Run.

            Parameters
            ----------
            hidden, layers : int
                The same default, so the group renders right.
            name : {'adam', 'sgd'}
            **kwargs
                Anything else.
            """

        def _private(a=1, b=2):
            """Not rendered.

            Parameters
            ----------
            a, b : int
            """
    ''') == []
