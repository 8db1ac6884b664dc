"""mkdocs hook: fail the build when the API reference would show parameters that are not the code's.

The reference pages are rendered by mkdocstrings, which reads the numpydoc "Parameters" sections with
griffe and fills each entry's default from the signature, keyed on the entry's first name. So:

- a grouped entry (``hidden, layers : int``) gives every name the FIRST name's default
  (``layers`` was shown as 64, hidden's default, instead of 1);
- a set of choices (``name : {'adam', 'adamw', 'sgd'}``) makes its first value the default, as the
  numpydoc convention says, even for a required argument;
- a parameter the section leaves out gets no row at all, and text after the section (instead of
  under a "Notes" heading) is read as more parameters;
- a description that starts with ">" ("> 0") is rendered as a Markdown quotation, the ">" lost.

None of these is a warning, so ``mkdocs build --strict`` alone does not catch them. This hook loads
the package exactly as mkdocstrings does, before any page is built, and checks that every documented
default is the signature's, every documented name is in the signature, and every object the
reference renders documents all of its parameters.
"""
import importlib.util
import os
import pathlib
from typing import Any, Iterable, List, Optional, Set

PACKAGE = "gpu_lstm"
HOOKS = pathlib.Path(__file__).resolve().parent


def _roles() -> Any:
    """The sibling griffe extension, whose rendered_paths says what the reference renders."""
    spec = importlib.util.spec_from_file_location("sphinx_roles", HOOKS / "sphinx_roles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _signature(obj: Any) -> List[Any]:
    """The parameters a docstring of obj documents: a class documents its __init__'s."""
    if obj.is_class:
        init = obj.members.get("__init__")
        params = list(init.parameters) if init is not None and not init.is_alias else []
    else:
        params = list(obj.parameters)
    return params[1:] if params and params[0].name in ("self", "cls") else params


def _check(obj: Any, rendered: bool, problems: List[str]) -> None:
    if not obj.docstring:
        return
    signature = {p.name: p for p in _signature(obj)}
    documented: Set[str] = set()
    for section in obj.docstring.parse("numpy"):
        if section.kind.value != "parameters":
            continue
        for entry in section.value:
            name = entry.name.lstrip("*")           # "**kwargs" is documented with its stars
            documented.add(name)
            if entry.description.lstrip().startswith(">"):
                problems.append(f"{obj.path}: the description of {name!r} starts with '>', which Markdown "
                                f"renders as a quotation (write 'At least 0', 'Greater than 1', ...)")
            param = signature.get(name)
            if param is None:
                problems.append(f"{obj.path}: documents {name!r}, which its signature does not have")
            elif str(entry.default) != str(param.default):
                shown = "no default (required)" if entry.default is None else f"default {entry.default}"
                actual = "no default" if param.default is None else f"default {param.default}"
                problems.append(f"{obj.path}: the reference shows {name!r} with {shown}, the code has "
                                f"{actual} (split a grouped entry, or drop a {{choices}} type on a "
                                f"required argument)")
    missing = [name for name in signature if name not in documented]
    if rendered and missing:
        problems.append(f"{obj.path}: the reference shows no row for {', '.join(missing)} (add them to "
                        f"the docstring's Parameters section)")


def _walk(obj: Any, rendered: Set[str], problems: List[str]) -> None:
    for member in obj.members.values():
        # Aliases are re-exports, checked where they are defined; private names are not rendered
        # (mkdocs.yml filters "!^_").
        if member.is_alias or member.name.startswith("_"):
            continue
        if member.is_function or member.is_class:
            _check(member, member.path in rendered, problems)
        if member.is_class or member.is_module:
            _walk(member, rendered, problems)


def parameter_problems(package: str = PACKAGE, search_paths: Iterable[str] = (".",),
                       targets: Optional[Iterable[str]] = None) -> List[str]:
    """Every way the reference's parameter tables would differ from the signatures.

    Parameters
    ----------
    package : str
        The package to load, as mkdocstrings would (its source, not an import).
    search_paths : sequence of str
        Where to find it.
    targets : iterable of str, optional
        The identifiers the reference pages render (``::: identifier``); None reads them from
        docs/reference/*.md. Only their objects must document every parameter; defaults and
        documented names are checked on every public object.

    Returns
    -------
    list of str
        One line per problem, naming the object and the parameter; empty when the reference is right.
    """
    import griffe
    roles = _roles()
    pkg = griffe.load(package, search_paths=list(search_paths), docstring_parser="numpy")
    rendered = roles.rendered_paths(pkg, roles.reference_targets() if targets is None else targets)
    problems: List[str] = []
    _walk(pkg, rendered, problems)
    return problems


def on_pre_build(config: Any) -> None:
    from mkdocs.exceptions import PluginError
    problems = parameter_problems(search_paths=[os.path.dirname(os.path.abspath(config["config_file_path"]))])
    if problems:
        raise PluginError("the API reference's parameter tables are wrong:\n  " + "\n  ".join(problems))
