-- A renewal charge that failed outside the renewal job (the janitor resolving an outcome that was
-- unknown, a provider's late failure callback): its failure code, until the renewal job counts it
-- on the retry schedule, exactly as a charge refused at once. NULL when there is none to count.
ALTER TABLE subscriptions ADD COLUMN uncounted_failure_code TEXT;
