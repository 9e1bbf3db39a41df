"""Griffe extension for the API reference: show the code's reST roles as code spans.

The docstrings name objects the Sphinx way (:class:`~metaimprove.sim.policy.Policy`, :func:`collect`); the
Google-style parser leaves those roles in the text as written. This turns each into a code span, keeping only
the last dotted part when the target starts with ``~``, as Sphinx shows it. The code is left unchanged.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|obj|exc|const|type):`(~?)([^`]+)`")


def _code(match: re.Match[str]) -> str:
    target = match.group(2).strip()
    if match.group(1):
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


class ReSTRoles(griffe.Extension):
    """Rewrite ``:role:`target``` into a Markdown code span in every loaded docstring."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        _rewrite(pkg, set())


def _rewrite(obj: griffe.Object, seen: set[str]) -> None:
    if obj.path in seen:
        return
    seen.add(obj.path)
    if obj.docstring is not None:
        obj.docstring.value = ROLE.sub(_code, obj.docstring.value)
    for member in obj.members.values():
        if not member.is_alias:  # an import: its docstring belongs to the object it points at
            _rewrite(member, seen)
