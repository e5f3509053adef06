"""The fault simulator: a deterministic, in-process simulation of the whole payment flow in the
spirit of TigerBeetle's VOPR.

One seed (random.Random(seed)) drives a workload of players ordering (alone, or in bursts whose
writes share one group commit), paying, failing, refunding in full and in part, spending wallet
currency, acknowledging game deliveries and canceling, and their banks disputing paid charges
(sandbox and Stripe disputes, closed won or lost); the providers answer with seeded faults
(Stripe's API: refused connections, timeouts before and after it did the work, 5xx, malformed
bodies; its webhooks lost, delayed, duplicated, reordered; refunds that settle late; the
sandbox's callbacks refused, timed out after being applied, duplicated, plus its own magic
values); the clock moves through reservation expiry, the janitor's queries and settlement
cut-offs, with the scheduler's jobs run at those times; and the process is killed at seeded write
transactions (before or after COMMIT, inside a group commit, during the recovery after a
restart): the app is abandoned and built anew on the same file, as after kill -9.

After every step and at the end the invariants of invariants.py are checked against the
providers' own records. A failing seed prints itself (seed, step, the violated invariant, the
last steps) and replays identically:

    python -m tests.sim --seeds 20 --start 0 --steps 300
"""
