-- The payment method a paid payment saved at its provider, as the channel names it for
-- off-session renewals (Stripe: `cus_...:pm_...`; the sandbox: its own payment reference). NULL
-- when nothing was saved. Provider ids, not secrets.
ALTER TABLE payments ADD COLUMN saved_method_ref TEXT;
-- The sandbox saved every subscription's first payment under its own reference before this column.
UPDATE payments SET saved_method_ref = provider_ref
    WHERE channel = 'sandbox' AND substr(provider_ref, 1, 4) = 'sbx_'
      AND id IN (SELECT method_payment_id FROM subscriptions WHERE method_payment_id IS NOT NULL);
