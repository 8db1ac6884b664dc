"""mkdocs hook: fail the build when the API reference would show a parameter default the code does not have.

The reference pages are rendered by mkdocstrings, which reads the numpydoc "Parameters" sections with
griffe and fills each entry's default from the signature, keyed on the entry's first name. So:

- a grouped entry (``hidden, layers : int``) gives every name the FIRST name's default
  (``layers`` was shown as 64, hidden's default, instead of 1);
- a set of choices (``name : {'adam', 'adamw', 'sgd'}``) makes its first value the default, as the
  numpydoc convention says, even for a required argument.

Both put wrong defaults into the published reference without any warning, so ``mkdocs build
--strict`` alone does not catch them. This hook loads the package exactly as mkdocstrings does and
compares every documented default with the signature's before any page is built.
"""
import os
from typing import Any, List

PACKAGE = "gpu_lstm"


def _signature(obj: Any) -> List[Any]:
    """The parameters a docstring of obj documents: a class documents its __init__'s."""
    if obj.is_class:
        init = obj.members.get("__init__")
        return list(init.parameters) if init is not None and not init.is_alias else []
    return list(obj.parameters)


def _check(obj: Any, problems: List[str]) -> None:
    if not obj.docstring:
        return
    signature = {p.name: p for p in _signature(obj)}
    for section in obj.docstring.parse("numpy"):
        if section.kind.value != "parameters":
            continue
        for entry in section.value:
            name = entry.name.lstrip("*")           # "**kwargs" is documented with its stars
            param = signature.get(name)
            if param is None:
                problems.append(f"{obj.path}: documents {name!r}, which its signature does not have")
            elif str(entry.default) != str(param.default):
                shown = "no default (required)" if entry.default is None else f"default {entry.default}"
                actual = "no default" if param.default is None else f"default {param.default}"
                problems.append(f"{obj.path}: the reference shows {name!r} with {shown}, the code has "
                                f"{actual} (split a grouped entry, or drop a {{choices}} type on a "
                                f"required argument)")


def _walk(obj: Any, problems: List[str]) -> None:
    for member in obj.members.values():
        # Aliases are re-exports, checked where they are defined; private names are not rendered
        # (mkdocs.yml filters "!^_").
        if member.is_alias or member.name.startswith("_"):
            continue
        if member.is_function or member.is_class:
            _check(member, problems)
        if member.is_class or member.is_module:
            _walk(member, problems)


def default_mismatches(package: str = PACKAGE, search_paths: Any = (".",)) -> List[str]:
    """Every public docstring parameter whose rendered default differs from its signature's.

    Parameters
    ----------
    package : str
        The package to load, as mkdocstrings would (its source, not an import).
    search_paths : sequence of str
        Where to find it.

    Returns
    -------
    list of str
        One line per problem, naming the object and the parameter; empty when the reference is right.
    """
    import griffe
    problems: List[str] = []
    _walk(griffe.load(package, search_paths=list(search_paths), docstring_parser="numpy"), problems)
    return problems


def on_pre_build(config: Any) -> None:
    from mkdocs.exceptions import PluginError
    problems = default_mismatches(search_paths=[os.path.dirname(os.path.abspath(config["config_file_path"]))])
    if problems:
        raise PluginError("the API reference would show wrong defaults:\n  " + "\n  ".join(problems))
