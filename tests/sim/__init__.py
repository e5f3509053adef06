"""The fault simulator: a deterministic, in-process simulation of the whole payment flow in the
spirit of TigerBeetle's VOPR.

One seed (random.Random(seed)) drives a workload of players ordering (alone, or in bursts whose
writes share one group commit) through any of the merchant's five channels, paying or failing in
the provider's own page, refunding in full and in part, spending wallet currency, acknowledging
game deliveries and canceling, and their banks disputing paid charges (sandbox and Stripe
disputes, closed won or lost). The providers are the sandbox and the local stand-ins of Stripe,
PayPal, Alipay and WeChat Pay (tests/channels/standin_*.py, wired in providers.py), and they
answer with seeded faults: every API call (the PayPal certificate download too) refused, timed
out before or after the provider did the work, answered 5xx or with a malformed body; their
callbacks, each signed as that provider signs it when it is sent, lost, delayed, duplicated,
reordered, or applied with the answer lost and so sent again; refunds that settle late (Stripe,
PayPal, WeChat Pay); the sandbox's callbacks refused, timed out after being applied, duplicated,
plus its own magic values. The clock moves through reservation expiry, the janitor's queries and
settlement cut-offs, with the scheduler's jobs run at those times; and the process is killed at
seeded write transactions (before or after COMMIT, inside a group commit, during the recovery
after a restart): the app is abandoned and built anew on the same file, as after kill -9.

After every step and at the end the invariants of invariants.py are checked against the
providers' own records. A failing seed prints itself (seed, step, the violated invariant, the
last steps) and replays identically:

    python -m tests.sim --seeds 20 --start 0 --steps 300
"""
