"""The rule grammar (apss/domain/risk/rules.py): parsing, the type check with token positions,
evaluation against an independent oracle (Python's own boolean evaluation of the same tree,
built by the test), Radar's order of actions, missing attributes, the IP-to-country table."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apss.domain.risk.ip_country import country_of
from apss.domain.risk.rules import AttrType, RuleError, evaluate, parse_rule

TABLE = {"amount": AttrType.INT, "orders_per_ip_1h": AttrType.INT, "ip_country": AttrType.STR,
         "billing_country": AttrType.STR, "player_id": AttrType.STR, "product_ids": AttrType.STRS,
         "risk_score": AttrType.INT}


def run(text: str, attrs: dict, lists: dict | None = None) -> bool:
    return parse_rule(text, TABLE).predicate(attrs, lists or {})


@pytest.mark.parametrize("text, attrs, expected", [
    ("block if orders_per_ip_1h > 5", {"orders_per_ip_1h": 6}, True),
    ("block if orders_per_ip_1h > 5", {"orders_per_ip_1h": 5}, False),
    ("review if ip_country != billing_country and amount > 5000", {"ip_country": "US", "billing_country": "DE", "amount": 5001}, True),
    ("review if ip_country != billing_country and amount > 5000", {"ip_country": "US", "billing_country": "US", "amount": 9999}, False),
    ("block if not (amount < 10 or amount >= 100)", {"amount": 50}, True),
    ("block if not (amount < 10 or amount >= 100)", {"amount": 100}, False),
    ("block if ip_country in ['RU', 'KP']", {"ip_country": "KP"}, True),
    ("block if ip_country not in ['RU', 'KP']", {"ip_country": "KP"}, False),
    ("block if amount in [1, 2, 3]", {"amount": 2}, True),
    ("block if product_ids in ['prd_a', 'prd_z']", {"product_ids": ["prd_b", "prd_z"]}, True),
    ("block if product_ids in ['prd_a']", {"product_ids": ["prd_b"]}, False),
    ("block if is_missing(ip_country)", {}, True),
    ("block if is_missing(ip_country)", {"ip_country": "US"}, False),
    ("block if 5 < amount", {"amount": 6}, True),
    ("block if amount > -1", {"amount": 0}, True),
    ("block if player_id == 'o\\'brien'", {"player_id": "o'brien"}, True),
    ("block if player_id in @blocked_players", {"player_id": "bad"}, True),
    ("block if player_id not in @blocked_players", {"player_id": "bad"}, False),
    ("block if player_id in @other", {"player_id": "bad"}, False),  # a list nobody filled is empty
    # a missing attribute makes the comparison false, whichever operator
    ("block if ip_country != 'US'", {}, False),
    ("block if ip_country == billing_country", {"ip_country": "US"}, False),
    ("block if ip_country not in ['US']", {}, False),
    ("block if not ip_country == 'US'", {}, True),
    ("block if amount > 1 and amount < 3 or amount == 10", {"amount": 10}, True),  # and binds tighter
])
def test_rules_evaluate_as_written(text, attrs, expected):
    assert run(text, attrs, {"blocked_players": frozenset({"bad"})}) is expected


@pytest.mark.parametrize("text, reason, token", [
    ("block if colour == 'red'", "unknown attribute", "colour"),
    ("deny if amount > 1", "a rule starts with an action", "deny"),
    ("block amount > 1", "expected 'if'", "amount"),
    ("block if amount > 'x'", "type mismatch", ">"),
    ("block if ip_country > 'US'", "strings compare only with == and !=", ">"),
    ("block if product_ids == 'a'", "a set of strings takes only 'in'", "=="),
    ("block if amount in ['a']", "expected a number", "'a'"),
    ("block if amount in @list", "lists hold strings", "@list"),
    ("block if 1 == 2", "a comparison needs an attribute", "1"),
    ("block if (amount > 1", "expected ')'", ""),
    ("block if amount > 1)", "unexpected token", ")"),
    ("block if amount $ 1", "unexpected character", "$"),
    ("block if amount", "expected a comparison", ""),
    ("block if is_missing(5)", "is_missing takes an attribute", "5"),
    ("block if amount not 5", "expected 'in' after 'not'", "5"),
    ("block if ip_country in ['US' 'DE']", "',' or ']'", "'DE'"),
])
def test_bad_rules_name_the_token_and_its_position(text, reason, token):
    with pytest.raises(RuleError) as raised:
        parse_rule(text, TABLE)
    error = raised.value
    assert reason in error.reason, error
    assert error.token == token
    assert error.position == (text.index(token) + 1 if token else len(text) + 1)
    assert f"position {error.position}" in str(error)


def test_radar_order_require_3ds_then_allow_then_block_then_review():
    rules = [parse_rule(t, TABLE, name=n) for n, t in [
        ("r1", "review if amount > 10"), ("b1", "block if amount > 100"), ("b2", "block if amount > 50"),
        ("a1", "allow if player_id == 'vip'"), ("t1", "require_3ds if risk_score >= 65")]]
    decide = lambda **attrs: evaluate(rules, attrs, {})  # noqa: E731
    d = decide(amount=200, player_id="x", risk_score=0)
    assert (d.action, [f.name for f in d.fired]) == ("block", ["b1"]), "first block rule decides"
    d = decide(amount=200, player_id="vip", risk_score=0)
    assert (d.action, [f.name for f in d.fired]) == ("allow", ["a1"]), "allow skips block and review"
    d = decide(amount=20, player_id="x", risk_score=0)
    assert (d.action, [f.name for f in d.fired]) == ("review", ["r1"])
    d = decide(amount=20, player_id="x", risk_score=70)
    assert (d.action, d.three_ds, [f.name for f in d.fired]) == ("review", True, ["t1", "r1"])
    d = decide(amount=5, player_id="vip", risk_score=70)
    assert (d.action, d.three_ds, [f.name for f in d.fired]) == ("require_3ds", True, ["t1", "a1"])
    d = decide(amount=5, player_id="x", risk_score=0)
    assert (d.action, d.three_ds, d.fired) == ("allow", False, [])


# -- property: a random expression tree evaluates as Python evaluates the same tree ----------------
_INT_ATTRS = ["amount", "orders_per_ip_1h", "risk_score"]
_STR_ATTRS = ["ip_country", "billing_country"]
_OPS = ["==", "!=", "<", "<=", ">", ">="]


def _leaf() -> st.SearchStrategy:
    int_cmp = st.tuples(st.sampled_from(_INT_ATTRS), st.sampled_from(_OPS), st.integers(-5, 5)).map(
        lambda t: (f"{t[0]} {t[1]} {t[2]}", lambda a, t=t: a.get(t[0]) is not None and eval(f"{a[t[0]]} {t[1]} {t[2]}")))
    str_cmp = st.tuples(st.sampled_from(_STR_ATTRS), st.sampled_from(["==", "!="]), st.sampled_from(["US", "DE"])).map(
        lambda t: (f"{t[0]} {t[1]} '{t[2]}'",
                   lambda a, t=t: a.get(t[0]) is not None and ((a[t[0]] == t[2]) == (t[1] == "=="))))
    member = st.tuples(st.sampled_from(_STR_ATTRS), st.lists(st.sampled_from(["US", "DE", "JP"]), min_size=1, max_size=3)).map(
        lambda t: (f"{t[0]} in [{', '.join(repr(v) for v in t[1])}]", lambda a, t=t: a.get(t[0]) is not None and a[t[0]] in t[1]))
    missing = st.sampled_from(_INT_ATTRS + _STR_ATTRS).map(lambda n: (f"is_missing({n})", lambda a, n=n: a.get(n) is None))
    return st.one_of(int_cmp, str_cmp, member, missing)


def _tree() -> st.SearchStrategy:
    def extend(children):
        both = st.tuples(children, children)
        return st.one_of(
            both.map(lambda p: (f"({p[0][0]} and {p[1][0]})", lambda a, p=p: p[0][1](a) and p[1][1](a))),
            both.map(lambda p: (f"({p[0][0]} or {p[1][0]})", lambda a, p=p: p[0][1](a) or p[1][1](a))),
            children.map(lambda c: (f"not {c[0]}", lambda a, c=c: not c[1](a))),
        )
    return st.recursive(_leaf(), extend, max_leaves=12)


_attrs = st.fixed_dictionaries({}, optional={
    **{n: st.integers(-6, 6) for n in _INT_ATTRS}, **{n: st.sampled_from(["US", "DE", "JP"]) for n in _STR_ATTRS}})


@settings(max_examples=300, deadline=None)
@given(tree=_tree(), attrs=_attrs)
def test_any_expression_evaluates_as_its_oracle(tree, attrs):
    text, oracle = tree
    assert run(f"block if {text}", attrs) is bool(oracle(attrs)), text


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_arbitrary_text_parses_or_raises_rule_error_never_anything_else(text):
    try:
        parse_rule(f"block if {text}", TABLE)
    except RuleError as error:
        assert 1 <= error.position <= len(text) + 10
    try:
        parse_rule(text, TABLE)
    except RuleError:
        pass


def test_deep_nesting_is_refused_not_a_recursion_error():
    with pytest.raises(RuleError, match="nested deeper"):
        parse_rule("block if " + "(" * 100 + "amount > 1" + ")" * 100, TABLE)
    with pytest.raises(RuleError, match="nested deeper"):
        parse_rule("block if " + "not " * 100 + "amount > 1", TABLE)


def test_ip_country_is_the_registries_country_for_both_versions():
    """Long-standing allocations whose registry country is not in doubt, v4 and v6, and the
    addresses no registry gives a country (private, documentation, loopback, not an address)."""
    known = {"8.8.8.8": "US", "1.1.1.1": "AU", "133.1.2.3": "JP", "53.1.2.3": "DE", "25.1.2.3": "GB",
             "200.160.2.3": "BR", "85.96.1.1": "TR", "49.36.1.1": "IN", "61.128.1.1": "CN",
             "2001:4860:4860::8888": "US", "240e:1::1": "CN", "2003::1": "DE", "2804:14c::1": "BR"}
    assert {ip: country_of(ip) for ip in known} == known
    assert country_of("::ffff:8.8.8.8") == "US"  # an IPv4-mapped address, as a dual-stack socket reports it
    for nowhere in ("10.0.0.1", "192.168.1.1", "127.0.0.1", "100.64.0.1", "2001:db8::1", "::1", "fe80::1",
                    "nonsense", "", "1.2.3.4.5", "::ffff:10.0.0.1"):
        assert country_of(nowhere) is None, nowhere


def test_every_rule_attribute_is_documented_with_its_type():
    """docs/risk.md's attribute table names every attribute the rules may read (brace patterns
    such as `orders_per_{player,ip,device}_{1h,1d,7d}` expanded), each with the engine's type."""
    import itertools
    import re
    from pathlib import Path

    from apss.services.risk.engine import attribute_table

    text = (Path(__file__).resolve().parents[1] / "docs" / "risk.md").read_text()
    table = text[text.index("## Attributes"):]
    table = table[: table.index("\n\n", table.index("| attribute |"))]
    documented: dict[str, str] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        for name in re.findall(r"`([^`]+)`", cells[0]):
            parts = [p.split(",") for p in re.split(r"\{([^}]*)\}", name)[1::2]]
            fixed = re.split(r"\{[^}]*\}", name)
            for choice in itertools.product(*parts):
                documented["".join(f + c for f, c in zip(fixed, (*choice, "")))] = cells[1]
    table_types = {name: t.value if hasattr(t, "value") else str(t) for name, t in attribute_table("USD").items()}
    documented["amount_usd"] = documented.pop("amount_<ccy>")
    missing = sorted(set(table_types) - set(documented))
    assert not missing, missing
    wrong = {n: (documented[n], table_types[n]) for n in table_types if documented[n] != table_types[n]}
    assert not wrong, wrong
