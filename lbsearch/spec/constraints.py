"""Constraints over a trial's params: small boolean expressions, parsed once and evaluated without
``eval``. Dotted names are the search-space keys:

    train.batch_size < 512 or optimizer.lr <= 1e-3
    not (train.batch_size >= 256 and train.clip_norm is None)

Allowed: numbers, strings, None / True / False, names, comparisons (incl. ``in``, ``is``), ``and``
``or`` ``not``, + - * / // % **, and lists or tuples of constants.
"""

from __future__ import annotations

import ast
import operator
from typing import Any

__all__ = ["Constraint", "parse"]

_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_CMP = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Eq: operator.eq,
        ast.NotEq: operator.ne, ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
        ast.Is: operator.is_, ast.IsNot: operator.is_not}
_UNARY = {ast.Not: operator.not_, ast.USub: operator.neg, ast.UAdd: operator.pos}


def _name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _name(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


class Constraint:
    def __init__(self, text: str) -> None:
        self.text = text
        try:
            self.tree = ast.parse(text.strip(), mode="eval").body
        except SyntaxError as err:
            raise ValueError(f"constraint {text!r} is not an expression: {err.msg}") from None
        self.names: set[str] = set()
        self._check(self.tree)

    def _check(self, node: ast.AST) -> None:
        name = _name(node)
        if name is not None:
            self.names.add(name)
            return
        allowed = (ast.BoolOp, ast.UnaryOp, ast.Compare, ast.BinOp, ast.Constant, ast.List, ast.Tuple, ast.And, ast.Or, ast.Load)
        if not isinstance(node, allowed + tuple(_BIN) + tuple(_CMP) + tuple(_UNARY)):
            raise ValueError(f"constraint {self.text!r}: `{type(node).__name__}` is not allowed (comparisons, and/or/not, arithmetic)")
        for child in ast.iter_child_nodes(node):
            self._check(child)

    def __call__(self, params: dict[str, Any]) -> bool:
        return bool(self._eval(self.tree, params))

    def _eval(self, node: ast.AST, params: dict[str, Any]) -> Any:
        name = _name(node)
        if name is not None:
            return params.get(name)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            return [self._eval(e, params) for e in node.elts]
        if isinstance(node, ast.BoolOp):
            values = (self._eval(v, params) for v in node.values)
            return all(values) if isinstance(node.op, ast.And) else any(values)
        if isinstance(node, ast.UnaryOp):
            return _UNARY[type(node.op)](self._eval(node.operand, params))
        if isinstance(node, ast.BinOp):
            return _BIN[type(node.op)](self._eval(node.left, params), self._eval(node.right, params))
        left = self._eval(node.left, params)
        for op, right_node in zip(node.ops, node.comparators):
            right = self._eval(right_node, params)
            if left is None and not isinstance(op, (ast.Is, ast.IsNot, ast.Eq, ast.NotEq)):
                return False  # an unset param (e.g. clipping off) compares as false
            if not _CMP[type(op)](left, right):
                return False
            left = right
        return True


def parse(texts: list[str], known: set[str]) -> list[Constraint]:
    """Parse constraints; each name must be a key of the search space."""
    out = []
    for text in texts:
        c = Constraint(text)
        unknown = sorted(c.names - known)
        if unknown:
            raise ValueError(f"constraint {text!r} names {unknown[0]!r}, which is not searched; searched: {', '.join(sorted(known))}")
        out.append(c)
    return out
