"""Griffe extension for the API reference: Sphinx roles in docstrings become links or code.

The docstrings cross-reference with Sphinx roles (``:class:`LSTM```, ``:meth:`state_dict```,
``:func:`~gpu_lstm.lstm.Tape```), which read well in ``help()`` but which mkdocstrings does not
understand: the site showed them as literal text (":meth: state_dict"). After griffe has loaded the
package, this rewrites each role in the rendered docstrings:

- a target the reference renders (an object named on a ``::: target`` line of docs/reference/*.md,
  or a public member of one) becomes an autorefs link, ``[`text`][full.path]``; ``mkdocs build
  --strict`` then fails on any link that does not resolve, so a wrong target cannot ship;
- anything else (a private helper, a module the reference does not render) becomes a code span.

The name is resolved in the docstring's own scope, as Python would (a method's ``:meth:`step``` is
its class's ``step``); ``~`` shows only the last component, as in Sphinx.
"""
import pathlib
import re
from typing import Any, Iterable, Optional, Set

import griffe

ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc|obj):`(~?)([A-Za-z_][\w.]*)`")
REFERENCE_DIR = pathlib.Path(__file__).resolve().parents[1] / "reference"


def reference_targets(reference_dir: pathlib.Path = REFERENCE_DIR) -> Iterable[str]:
    """The identifiers of the ``::: identifier`` lines of the reference pages."""
    for page in sorted(reference_dir.glob("*.md")):
        for line in page.read_text().splitlines():
            if line.startswith(":::"):
                yield line[3:].strip()


def _lookup(pkg: Any, path: str) -> Optional[Any]:
    """The object at path inside pkg, with re-exports followed; None when it is not there."""
    if path == pkg.path:
        return pkg
    if not path.startswith(pkg.path + "."):
        return None
    try:
        obj = pkg[path[len(pkg.path) + 1:]]
        return obj.final_target if obj.is_alias else obj
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def _public_tree(obj: Any) -> Iterable[Any]:
    """obj and the members mkdocstrings renders with it: public, defined here (not re-exported), and
    with a docstring of their own or below them (show_if_no_docstring is off)."""
    yield obj
    for member in obj.members.values():
        if not member.is_alias and not member.name.startswith("_") and member.has_docstrings:
            yield from (_public_tree(member) if member.is_class or member.is_module else (member,))


def rendered_paths(pkg: Any, targets: Iterable[str]) -> Set[str]:
    """The canonical paths of every object the reference renders."""
    paths: Set[str] = set()
    for target in targets:
        obj = _lookup(pkg, target)
        if obj is not None:
            paths.update(o.path for o in _public_tree(obj))
    return paths


def rewrite(obj: Any, text: str, pkg: Any, rendered: Set[str]) -> str:
    """text with each Sphinx role replaced by a link (rendered targets) or a code span."""
    def replace(match: "re.Match[str]") -> str:
        tilde, name = match.groups()
        shown = name.rsplit(".", 1)[-1] if tilde else name
        # griffe resolves a single name in scope; "LSTM.set_params" resolves its first component
        # and follows the attribute path from there, as Python would.
        head, _, rest = name.partition(".")
        try:
            full = name if name.startswith(pkg.path + ".") else obj.resolve(head) + (f".{rest}" if rest else "")
        except griffe.NameResolutionError:
            full = None
        target = _lookup(pkg, full) if full else None
        if target is not None and target.path in rendered:
            return f"[`{shown}`][{target.path}]"
        return f"`{shown}`"
    return ROLE.sub(replace, text)


def _documented(obj: Any) -> Iterable[Any]:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _documented(member)


class SphinxRoles(griffe.Extension):
    """Rewrites the roles once the whole package is loaded (scopes and re-exports are known then)."""

    def on_package(self, *, pkg: Any, **kwargs: Any) -> None:
        rendered = rendered_paths(pkg, reference_targets())
        for obj in _documented(pkg):
            if obj.docstring is not None and ":" in obj.docstring.value:
                obj.docstring.value = rewrite(obj, obj.docstring.value, pkg, rendered)
