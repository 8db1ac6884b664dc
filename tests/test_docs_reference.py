"""The API reference shows the defaults the code has (docs/hooks/docstring_parameters.py) and no
literal Sphinx roles (docs/hooks/sphinx_roles.py).

Needs griffe (the documentation extra, ``make docs``); without it these tests skip, and the same
check still runs in every documentation build, where it fails the build.
"""
import importlib.util
import pathlib
import textwrap

import pytest

griffe = pytest.importorskip("griffe")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _hook(name="docstring_parameters"):
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_reference_shows_every_parameter_and_default_the_code_has():
    assert _hook().parameter_problems(search_paths=[str(ROOT)]) == []


def _package(tmp_path, source, targets=()):
    pkg = tmp_path / "docpkg"
    pkg.mkdir(exist_ok=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(source))
    return _hook().parameter_problems("docpkg", search_paths=[str(tmp_path)], targets=targets)


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


def test_a_rendered_object_must_document_every_parameter(tmp_path):
    source = '''
        def run(steps, lr=0.1, **kwargs):
            """Run.

            Parameters
            ----------
            steps : int
            """
    '''
    assert _package(tmp_path, source) == []                       # not rendered: not required
    assert _package(tmp_path, source, targets=["docpkg"]) == [
        "docpkg.run: the reference shows no row for lr, kwargs (add them to the docstring's Parameters "
        "section)"]


def test_prose_after_the_parameters_section_is_reported(tmp_path):
    problems = _package(tmp_path, '''
        def run(steps=1):
            """Run.

            Parameters
            ----------
            steps : int

            Supported dtypes: all of them.
            """
    ''')
    assert problems and all("which its signature does not have" in p for p in problems), problems


def test_a_description_starting_with_a_comparison_is_reported(tmp_path):
    problems = _package(tmp_path, '''
        def run(lr=0.1):
            """Run.

            Parameters
            ----------
            lr : float
                > 0.
            """
    ''')
    assert problems == ["docpkg.run: the description of 'lr' starts with '>', which Markdown renders as a "
                        "quotation (write 'At least 0', 'Greater than 1', ...)"]


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


def _rendered_docstrings(roles, pkg):
    rendered = roles.rendered_paths(pkg, roles.reference_targets())
    return {o.path: o.docstring.value for o in roles._documented(pkg)
            if o.path in rendered and o.docstring is not None}


def test_no_rendered_docstring_keeps_a_sphinx_role():
    roles = _hook("sphinx_roles")
    pkg = griffe.load("gpu_lstm", search_paths=[str(ROOT)], docstring_parser="numpy")
    before = _rendered_docstrings(roles, pkg)
    assert any(roles.ROLE.search(text) for text in before.values())     # there is something to convert
    roles.SphinxRoles().on_package(pkg=pkg)
    import re
    left = {path: re.findall(r":[a-z]+:`[^`]*`", text) for path, text in _rendered_docstrings(roles, pkg).items()}
    assert {path: found for path, found in left.items() if found} == {}


def test_roles_become_links_to_rendered_objects_and_code_otherwise(tmp_path):
    roles = _hook("sphinx_roles")
    pkg_dir = tmp_path / "rolepkg"
    pkg_dir.mkdir()
    (pkg_dir / "__init__.py").write_text(textwrap.dedent('''
        from .core import Model


        def _helper():
            """Private."""
    '''))
    (pkg_dir / "core.py").write_text(textwrap.dedent('''
        class Model:
            """See :meth:`step`, :class:`~rolepkg.core.Model`, :func:`rolepkg._helper`,
            :func:`numpy.zeros` and :meth:`nowhere`."""

            def step(self):
                """One step; after :meth:`Model.step` comes :meth:`hidden`."""

            def hidden(self):
                pass
    '''))
    pkg = griffe.load("rolepkg", search_paths=[str(tmp_path)], docstring_parser="numpy")
    rendered = roles.rendered_paths(pkg, ["rolepkg.Model"])       # through the re-export
    assert rendered == {"rolepkg.core.Model", "rolepkg.core.Model.step"}   # hidden has no docstring
    model = pkg["core.Model"]
    assert roles.rewrite(model, model.docstring.value, pkg, rendered) == (
        "See [`step`][rolepkg.core.Model.step], [`Model`][rolepkg.core.Model], `rolepkg._helper`,\n"
        "`numpy.zeros` and `nowhere`.")
    step = model["step"]
    assert roles.rewrite(step, step.docstring.value, pkg, rendered) == (
        "One step; after [`Model.step`][rolepkg.core.Model.step] comes `hidden`.")
