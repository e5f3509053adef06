"""The risk rule grammar (in the spirit of Stripe Radar), its type check and its evaluator. Pure.

    rule       := action "if" expr
    action     := "allow" | "block" | "review" | "require_3ds"
    expr       := conj ("or" conj)*
    conj       := neg ("and" neg)*
    neg        := "not" neg | atom
    atom       := "(" expr ")" | "is_missing" "(" NAME ")" | BOOLNAME | operand compare
    compare    := ("==" | "!=" | "<" | "<=" | ">" | ">=") operand
                | ["not"] "in" (list | "@" LISTNAME)
    operand    := NAME | INTEGER | STRING
    list       := "[" literal ("," literal)* "]"

Names are attributes from a typed table (`int`, `str`, `strs`, a set of strings such as the
product ids of an order, or `bool`). A `bool` attribute stands alone as a condition
(`new_device`, `not new_device`): true when it holds true, false when false or missing; it takes
no comparison. A comparison needs at least one attribute, and both sides of one type;
`<`..`>=` are for integers; `in` on a `strs` attribute is true when any of its members is in the
list. A comparison that reads a missing attribute is false (test it with `is_missing(x)`).

Evaluation follows Radar: the `require_3ds` rules first, then `allow`, then `block`, then
`review`; within a kind the first rule that matches decides, and a matching `allow` skips the
block and review rules. Rules compile to closures once, when parsed.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Container, Mapping, Sequence
from typing import Any

import msgspec

__all__ = [
    "ACTIONS",
    "AttrType",
    "CompiledRule",
    "Decision",
    "FiredRule",
    "RuleError",
    "evaluate",
    "parse_rule",
]

ACTIONS = ("allow", "block", "review", "require_3ds")
_KEYWORDS = frozenset({"if", "and", "or", "not", "in", "is_missing", *ACTIONS})
RULE_LENGTH_MAX = 2000
LIST_LITERAL_MAX = 1000
DEPTH_MAX = 32  # nesting of parentheses and `not`: a bound on the recursion
STRING_LENGTH_MAX = 256


class AttrType(enum.StrEnum):
    INT = "int"
    STR = "str"
    STRS = "strs"  # a set of strings: `in` is true when any member is in the list
    BOOL = "bool"  # stands alone as a condition


class RuleError(ValueError):
    """A rule that does not parse or type-check: the offending token and its 1-based position."""

    def __init__(self, reason: str, *, token: str, position: int) -> None:
        assert position >= 1
        self.reason, self.token, self.position = reason, token, position
        shown = token if token else "end of rule"
        super().__init__(f"{reason}: '{shown}' at position {position}" if token else f"{reason} at {shown} (position {position})")


class _Tok(msgspec.Struct, frozen=True):
    kind: str  # name, int, str, op, list_ref, end
    text: str
    value: Any
    position: int  # 1-based


_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<int>-?\d+)
  | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<list_ref>@[A-Za-z_][A-Za-z0-9_]{0,63})
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>==|!=|<=|>=|<|>|\(|\)|\[|\]|,)
""", re.VERBOSE)


def _tokens(text: str) -> list[_Tok]:
    if len(text) > RULE_LENGTH_MAX:
        raise RuleError(f"a rule is at most {RULE_LENGTH_MAX} characters", token=text[RULE_LENGTH_MAX:][:10],
                        position=RULE_LENGTH_MAX + 1)
    out: list[_Tok] = []
    at = 0
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None:
            raise RuleError("unexpected character", token=text[at], position=at + 1)
        kind, lexeme = match.lastgroup, match.group()
        assert kind is not None and lexeme
        if kind == "int":
            value = int(lexeme)
            if abs(value) >= 1 << 63:
                raise RuleError("integer out of range", token=lexeme, position=at + 1)
        elif kind == "str":
            value = re.sub(r"\\(.)", r"\1", lexeme[1:-1])
            if len(value) > STRING_LENGTH_MAX:
                raise RuleError(f"a string is at most {STRING_LENGTH_MAX} characters", token=lexeme[:20], position=at + 1)
        elif kind == "list_ref":
            value = lexeme[1:]
        else:
            value = lexeme
        if kind != "space":
            out.append(_Tok(kind, lexeme, value, at + 1))
        at = match.end()
    out.append(_Tok("end", "", None, len(text) + 1))
    return out


# A compiled predicate: attribute values (None or absent = missing) and the lists -> bool.
Predicate = Callable[[Mapping[str, Any], Mapping[str, Container]], bool]


class _Operand(msgspec.Struct, frozen=True):
    type: AttrType
    name: str | None = None  # an attribute, or a literal
    value: Any = None
    token: _Tok | None = None


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
}


class _Parser:
    def __init__(self, text: str, attributes: Mapping[str, AttrType]) -> None:
        self.toks = _tokens(text)
        self.at = 0
        self.attributes = attributes
        self.names: set[str] = set()
        self.lists: set[str] = set()
        self.depth = 0

    @property
    def tok(self) -> _Tok:
        return self.toks[self.at]

    def take(self) -> _Tok:
        tok = self.toks[self.at]
        self.at += 1
        assert self.at <= len(self.toks)
        return tok

    def is_word(self, word: str) -> bool:
        return self.tok.kind == "name" and self.tok.text == word

    def is_op(self, op: str) -> bool:
        return self.tok.kind == "op" and self.tok.text == op

    def expect_op(self, op: str, what: str) -> _Tok:
        if not self.is_op(op):
            raise self.error(f"expected {what}")
        return self.take()

    def error(self, reason: str, tok: _Tok | None = None) -> RuleError:
        tok = tok or self.tok
        return RuleError(reason, token=tok.text, position=tok.position)

    # -- grammar ---------------------------------------------------------------------------
    def rule(self) -> tuple[str, Predicate]:
        first = self.tok
        if first.kind != "name" or first.text not in ACTIONS:
            raise self.error(f"a rule starts with an action ({', '.join(ACTIONS)})")
        self.take()
        if not self.is_word("if"):
            raise self.error("expected 'if' after the action")
        self.take()
        predicate = self.expr()
        if self.tok.kind != "end":
            raise self.error("unexpected token")
        return first.text, predicate

    def nest(self) -> None:
        self.depth += 1
        if self.depth > DEPTH_MAX:
            raise self.error(f"nested deeper than {DEPTH_MAX}")

    def expr(self) -> Predicate:
        parts = [self.conj()]
        while self.is_word("or"):
            self.take()
            parts.append(self.conj())
        if len(parts) == 1:
            return parts[0]
        return lambda a, l: any(p(a, l) for p in parts)

    def conj(self) -> Predicate:
        parts = [self.neg()]
        while self.is_word("and"):
            self.take()
            parts.append(self.neg())
        if len(parts) == 1:
            return parts[0]
        return lambda a, l: all(p(a, l) for p in parts)

    def neg(self) -> Predicate:
        if self.is_word("not"):
            self.take()
            self.nest()
            inner = self.neg()
            self.depth -= 1
            return lambda a, l: not inner(a, l)
        return self.atom()

    def atom(self) -> Predicate:
        if self.is_op("("):
            self.take()
            self.nest()
            inner = self.expr()
            self.depth -= 1
            self.expect_op(")", "')'")
            return inner
        if self.is_word("is_missing"):
            self.take()
            self.expect_op("(", "'(' after is_missing")
            operand = self.operand()
            if operand.name is None:
                raise self.error("is_missing takes an attribute", operand.token)
            self.expect_op(")", "')'")
            name = operand.name
            return lambda a, l: a.get(name) is None
        left = self.operand()
        if left.type is AttrType.BOOL:
            if self.is_word("in") or self.is_word("not") or (self.tok.kind == "op" and self.tok.text in _COMPARE):
                raise self.error(f"'{left.name}' is a bool: it stands alone ({left.name}, not {left.name})")
            name = left.name
            return lambda a, l: a.get(name) is True
        if self.is_word("in"):
            self.take()
            return self.membership(left, negate=False)
        if self.is_word("not"):
            self.take()
            if not self.is_word("in"):
                raise self.error("expected 'in' after 'not'")
            self.take()
            return self.membership(left, negate=True)
        if self.tok.kind == "op" and self.tok.text in _COMPARE:
            return self.comparison(left, self.take())
        raise self.error("expected a comparison (== != < <= > >=) or 'in'")

    def operand(self) -> _Operand:
        tok = self.tok
        if tok.kind == "int":
            self.take()
            return _Operand(type=AttrType.INT, value=tok.value, token=tok)
        if tok.kind == "str":
            self.take()
            return _Operand(type=AttrType.STR, value=tok.value, token=tok)
        if tok.kind == "name" and tok.text not in _KEYWORDS:
            attr_type = self.attributes.get(tok.text)
            if attr_type is None:
                raise self.error("unknown attribute")
            self.take()
            self.names.add(tok.text)
            return _Operand(type=attr_type, name=tok.text, token=tok)
        raise self.error("expected an attribute, a number or a string")

    def comparison(self, left: _Operand, op: _Tok) -> Predicate:
        right = self.operand()
        if right.type is AttrType.BOOL:
            raise self.error(f"'{right.name}' is a bool: it stands alone ({right.name}, not {right.name})", right.token)
        if left.name is None and right.name is None:
            raise self.error("a comparison needs an attribute", left.token)
        if AttrType.STRS in (left.type, right.type):
            raise self.error("a set of strings takes only 'in' and 'not in'", op)
        if left.type is not right.type:
            raise self.error(f"type mismatch: {left.type.value} {op.text} {right.type.value}", op)
        if left.type is AttrType.STR and op.text not in ("==", "!="):
            raise self.error("strings compare only with == and !=", op)
        compare = _COMPARE[op.text]
        if left.name is not None and right.name is not None:
            ln, rn = left.name, right.name

            def both(a: Mapping[str, Any], l: Mapping[str, Container]) -> bool:
                x, y = a.get(ln), a.get(rn)
                return x is not None and y is not None and compare(x, y)
            return both
        if left.name is not None:
            name, value = left.name, right.value
            return lambda a, l: (x := a.get(name)) is not None and compare(x, value)
        name, value = right.name, left.value
        return lambda a, l: (y := a.get(name)) is not None and compare(value, y)

    def membership(self, left: _Operand, *, negate: bool) -> Predicate:
        if left.name is None:
            raise self.error("'in' needs an attribute on its left", left.token)
        name, strs = left.name, left.type is AttrType.STRS
        if self.tok.kind == "list_ref":
            ref = self.take()
            if left.type is AttrType.INT:
                raise self.error("lists hold strings: an integer attribute cannot be looked up in one", ref)
            list_name = ref.value
            self.lists.add(list_name)

            def in_list(a: Mapping[str, Any], lists: Mapping[str, Container]) -> bool:
                value = a.get(name)
                if value is None:
                    return False
                members = lists.get(list_name, ())
                found = any(v in members for v in value) if strs else value in members
                return found != negate
            return in_list
        literal = frozenset(self.list_literal(AttrType.INT if left.type is AttrType.INT else AttrType.STR))

        def in_literal(a: Mapping[str, Any], l: Mapping[str, Container]) -> bool:
            value = a.get(name)
            if value is None:
                return False
            found = not literal.isdisjoint(value) if strs else value in literal
            return found != negate
        return in_literal

    def list_literal(self, element: AttrType) -> list[Any]:
        self.expect_op("[", "a list: '[' or '@name'")
        values: list[Any] = []
        while True:
            tok = self.tok
            want = "int" if element is AttrType.INT else "str"
            if tok.kind != want:
                raise self.error(f"expected a {'number' if want == 'int' else 'string'} in the list")
            values.append(self.take().value)
            if len(values) > LIST_LITERAL_MAX:
                raise self.error(f"a list holds at most {LIST_LITERAL_MAX} values", tok)
            if self.is_op(","):
                self.take()
                continue
            self.expect_op("]", "',' or ']'")
            return values


class CompiledRule(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    rule: str
    action: str
    predicate: Predicate
    attributes: frozenset[str]  # the attributes it reads
    lists: frozenset[str]  # the @lists it looks up


def parse_rule(text: str, attributes: Mapping[str, AttrType], *, name: str = "") -> CompiledRule:
    """Parse and type-check one rule against the attribute table; RuleError if it is not valid."""
    parser = _Parser(text, attributes)
    action, predicate = parser.rule()
    assert action in ACTIONS
    return CompiledRule(name=name, rule=text, action=action, predicate=predicate,
                        attributes=frozenset(parser.names), lists=frozenset(parser.lists))


class FiredRule(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    rule: str
    action: str


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """`action`: block or review when one fired (and no allow did), else require_3ds when one
    fired, else allow. `three_ds`: a require_3ds rule fired (also when the action is review)."""

    action: str
    three_ds: bool
    fired: list[FiredRule]


_ORDER = ("require_3ds", "allow", "block", "review")


def evaluate(rules: Sequence[CompiledRule], attributes: Mapping[str, Any],
             lists: Mapping[str, Container]) -> Decision:
    """Radar's order: require_3ds, allow, block, review; the first match of each kind decides."""
    first: dict[str, CompiledRule] = {}
    for kind in _ORDER:
        if kind == "block" and "allow" in first:
            break
        if kind == "review" and ("allow" in first or "block" in first):
            break
        for rule in rules:
            if rule.action == kind and rule.predicate(attributes, lists):
                first[kind] = rule
                break
    three_ds = "require_3ds" in first
    if "block" in first:
        action = "block"
    elif "review" in first:
        action = "review"
    elif three_ds:  # an allow rule does not cancel 3-D Secure: those rules run first
        action = "require_3ds"
    else:
        action = "allow"
    fired = [FiredRule(name=r.name, rule=r.rule, action=r.action) for k in _ORDER if (r := first.get(k)) is not None]
    assert action == "allow" or fired
    return Decision(action=action, three_ds=three_ds, fired=fired)
