"""Property tests: any sequence of payments, partial refunds and chargebacks leaves every ledger
transaction balanced and every split summing exactly; a full refund in any number of steps
reverses commission and shares exactly."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from apss.domain.ledger import (
    BPS,
    Split,
    capture_entries,
    check_balanced,
    over_refund_cover_entries,
    over_refund_entries,
    reversal_entries,
    share,
)

splits_strategy = st.lists(st.integers(min_value=1, max_value=2000), max_size=4).map(
    lambda shares: [Split(recipient=f"r{i}", share_bps=s) for i, s in enumerate(shares)])


@settings(max_examples=200, deadline=None)
@given(gross=st.integers(min_value=1, max_value=10**9), commission_bps=st.integers(min_value=0, max_value=BPS - 8000),
       splits=splits_strategy, fee_bps=st.integers(min_value=0, max_value=1000),
       cuts=st.lists(st.integers(min_value=1, max_value=10**9), max_size=6))
def test_any_sequence_of_refunds_balances_and_reverses_exactly(gross, commission_bps, splits, fee_bps, cuts):
    fee = share(gross, fee_bps)
    capture = capture_entries(merchant_id="m", channel="c", gross=gross, fee=fee, currency="USD",
                              commission_bps=commission_bps, splits=splits)
    check_balanced(capture)
    credits = {e.account: e.credit for e in capture if e.credit}
    assert sum(credits.values()) == gross, "commission, shares and the merchant's part are the whole"
    refunded, totals = 0, {}
    for cut in cuts:
        amount = min(cut, gross - refunded)
        if amount <= 0:
            break
        reversal = reversal_entries(merchant_id="m", channel="c", gross=gross, refunded_before=refunded, amount=amount,
                                    currency="USD", commission_bps=commission_bps, splits=splits)
        check_balanced(reversal)
        assert all(e.debit >= 0 and e.credit >= 0 for e in reversal)
        for entry in reversal:
            totals[entry.account] = totals.get(entry.account, 0) + entry.debit - entry.credit
        refunded += amount
    if refunded == gross and gross > 0:  # fully refunded: every credit of the capture is reversed exactly
        for account, credit in credits.items():
            assert totals.get(account, 0) == credit, account
        assert totals["provider_clearing:c:m"] == -gross


@settings(max_examples=200, deadline=None)
@given(gross=st.integers(min_value=1, max_value=10**9), commission_bps=st.integers(min_value=0, max_value=BPS - 8000),
       splits=splits_strategy, before=st.integers(min_value=0, max_value=10**9),
       amount=st.integers(min_value=1, max_value=10**9))
def test_a_covered_over_refund_ends_as_the_plain_refund(gross, commission_bps, splits, before, amount):
    """An over-refund, then its cover once the capture reaches it again: together, account by
    account, exactly the reversal a plain refund of that amount books (clearing moved once)."""
    before = min(before, gross - 1)
    amount = min(amount, gross - before)
    over = over_refund_entries(merchant_id="m", channel="c", amount=amount, currency="USD")
    cover = over_refund_cover_entries(merchant_id="m", channel="c", gross=gross, refunded_before=before, amount=amount,
                                      currency="USD", commission_bps=commission_bps, splits=splits)
    plain = reversal_entries(merchant_id="m", channel="c", gross=gross, refunded_before=before, amount=amount,
                             currency="USD", commission_bps=commission_bps, splits=splits)
    if cover:
        check_balanced(cover)
    assert all(not e.account.startswith("provider_clearing:") for e in cover), "the money left clearing once"

    def net(entries):
        totals = {}
        for entry in entries:
            totals[entry.account] = totals.get(entry.account, 0) + entry.debit - entry.credit
        return {account: value for account, value in totals.items() if value}

    assert net([*over, *cover]) == net(plain)


@settings(max_examples=200, deadline=None)
@given(amount=st.integers(min_value=0, max_value=10**12), bps=st.integers(min_value=0, max_value=BPS))
def test_share_is_half_even_and_bounded(amount, bps):
    part = share(amount, bps)
    assert 0 <= part <= amount
    exact_twice = 2 * amount * bps  # compare 2*part with the exact value scaled by 2*BPS
    assert abs(2 * part * BPS - exact_twice) <= BPS
