-- The payment method a subscription's first payment saved at its provider, as the channel names
-- it for off-session renewals (Stripe: `cus_...:pm_...`). NULL when the payment's provider_ref
-- is that reference itself (the sandbox) or nothing was saved. Provider ids, not secrets.
ALTER TABLE payments ADD COLUMN saved_method_ref TEXT;
