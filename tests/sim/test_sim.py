"""The fault simulator in CI: a bounded number of seeds, each checked after every step and at the
end against the providers' own records (tests/sim/invariants.py), and one seed replayed to prove
that a seed is the whole story."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.sim.world import CHANNELS, run_seed

SEEDS = range(5)
STEPS = 120
_results = []


@pytest.mark.parametrize("seed", SEEDS)
def test_seed_keeps_every_invariant(seed, tmp_path):
    result = run_seed(seed, steps=STEPS, workdir=tmp_path)
    _results.append(result)
    assert result.violation is None, result.report()
    assert sum(result.operations.values()) >= STEPS  # the run was not cut short


# Seeds that once found a defect (seed, steps): 102 left a Stripe payment `unknown` for good when
# the janitor's checks fell behind by days (store/channels.open_payments_due). The workload has
# grown since (five channels), so the seed no longer replays that run; it stays as a longer run.
REGRESSIONS = [(102, 300)]


@pytest.mark.parametrize(("seed", "steps"), REGRESSIONS)
def test_a_seed_that_found_a_defect_keeps_every_invariant(seed, steps, tmp_path):
    result = run_seed(seed, steps=steps, workdir=tmp_path)
    assert result.violation is None, result.report()


def test_the_seeds_killed_and_injected_faults():
    """Not vacuous: the CI seeds (run just above) killed the process, inside group commits too,
    injected faults into every provider's API, and every channel's provider charged and refunded
    (by its own records) and had its callbacks acknowledged."""
    assert len(_results) == len(SEEDS), "run with the seed tests"
    kills = sum(r.kills for r in _results)
    kinds = {kind for r in _results for kind in r.faults}
    assert kills >= 5 and sum(r.kills_in_group_commit for r in _results) >= 1, [r.report() for r in _results]
    assert len(kinds) >= 8, kinds
    providers = [channel for channel in CHANNELS if channel != "sandbox"]
    assert {f"{name}_api" for name in providers} <= {kind.split(":")[0] for kind in kinds}, kinds
    charged = sum((r.charged for r in _results), Counter())
    refunded = sum((r.refunded for r in _results), Counter())
    acknowledged = sum((r.acknowledged for r in _results), Counter())
    assert set(charged) == set(refunded) == set(CHANNELS), (charged, refunded)
    assert set(acknowledged) == set(providers), acknowledged
    assert any(kind.endswith(":settled_late") for kind in kinds), kinds
    disputes = sum((r.disputes for r in _results), Counter())
    assert {channel for channel, _ in disputes} == {"sandbox", "stripe"}, disputes
    assert {"won", "lost"} <= {status for _, status in disputes}, disputes


def test_a_seed_replays_identically(tmp_path):
    first = run_seed(2, steps=60, workdir=tmp_path / "a")
    second = run_seed(2, steps=60, workdir=tmp_path / "b")
    assert (first.trace, first.digest, first.kills, first.faults) == (second.trace, second.digest, second.kills,
                                                                      second.faults)


def test_a_broken_invariant_is_reported_with_its_seed_and_step(tmp_path, monkeypatch):
    """The checks can fail: a product's stock moved behind the app's back is caught at once."""
    import tests.sim.world as world

    original = world.Sim._setup

    async def setup_then_tamper(self):
        await original(self)
        first = next(iter(self.initial_stock))
        self.initial_stock[first] += 1  # what the simulation believes differs from the file

    monkeypatch.setattr(world.Sim, "_setup", setup_then_tamper)
    result = run_seed(0, steps=5, workdir=tmp_path)
    assert result.violation is not None and "stock + reserved + sold" in result.violation
    assert result.violation_step == 1 and "seed 0" in result.report() and "--start 0" in result.report()


def test_a_dispute_the_provider_holds_otherwise_is_reported(tmp_path, monkeypatch):
    """The dispute checks read the provider's records: a Stripe dispute whose amount the
    provider holds differently from what its event said is caught."""
    import tests.sim.world as world

    original = world.Sim.op_dispute

    async def dispute_then_tamper(self):
        await original(self)
        for dispute in self.stripe.disputes.values():
            dispute["amount"] += 1  # the event already went out with the amount before

    monkeypatch.setattr(world.Sim, "op_dispute", dispute_then_tamper)
    result = run_seed(1, steps=STEPS, workdir=tmp_path)
    assert result.violation is not None and "the provider holds" in result.violation, result.report()


def test_callbacks_the_channel_never_verifies_are_reported(tmp_path, monkeypatch):
    """The callbacks must really be signed as the provider signs: with the merchant's PayPal
    webhook id configured otherwise, no PayPal webhook verifies, and although the janitor's
    queries would hide it, the never-acknowledged callbacks are reported."""
    import tests.sim.providers as providers

    original = providers.PayPalSim.settings

    def other_webhook_id(self):
        return {**original(self), "webhook_id": "9OTHER0000000000X"}

    monkeypatch.setattr(providers.PayPalSim, "settings", other_webhook_id)
    result = run_seed(2, steps=60, workdir=tmp_path)
    assert result.violation is not None and "never acknowledged" in result.violation, result.report()
    assert "paypal" in result.violation and "paypal" not in result.acknowledged
