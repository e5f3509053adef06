-- The test clock's time (config clock.mode = "test"): one row, so a restart continues from it.
CREATE TABLE test_clock (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    now_ms INTEGER NOT NULL CHECK (now_ms >= 0)
) STRICT;
