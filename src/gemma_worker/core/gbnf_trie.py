"""Many literal alternatives as one GBNF prefix tree (sans-I/O).

Why: llama.cpp's grammar keeps one parse stack per live alternative and checks every
candidate token against each of them, so an ``enum`` of 1,000 strings written as
``"a..." | "b..." | ...`` costs 1,000 stack checks per candidate at its first character
(seconds per sampled token). The same language as a prefix tree has only as many stacks as
the tree branches at the current point: ``"\\"" ( "ap" ( "ple" | "ricot" ) | "banana" ) "\\""``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


@dataclass
class _Node:
    children: dict[str, _Node] = field(default_factory=dict)
    end: bool = False


def trie_alternatives(texts: Iterable[str], literal: Callable[[str], str]) -> str:
    """A GBNF expression matching exactly the strings ``texts`` (at least one; ``literal``
    writes a GBNF string literal for a text)."""
    root = _Node()
    for text in texts:
        node = root
        for ch in text:
            node = node.children.setdefault(ch, _Node())
        node.end = True
    if not root.children:
        return literal("")
    return _branches(root, literal)


def _branches(node: _Node, literal: Callable[[str], str]) -> str:
    """The alternatives below ``node`` (each a literal run, then what follows it)."""
    alts = []
    for ch in sorted(node.children):
        run, child = ch, node.children[ch]
        while not child.end and len(child.children) == 1:  # a chain: one literal
            ((nxt, child),) = child.children.items()
            run += nxt
        alts.append(literal(run) + _tail(child, literal))
    return alts[0] if len(alts) == 1 else "( " + " | ".join(alts) + " )"


def _tail(node: _Node, literal: Callable[[str], str]) -> str:
    if not node.children:
        return ""
    below = _branches(node, literal)
    if node.end:
        return f" ( {below} )?" if not below.startswith("(") else f" {below}?"
    return " " + below
