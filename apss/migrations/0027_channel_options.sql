-- The mobile flows of WeChat Pay and Alipay (POST /v1/orders `channel_options`): the flow the
-- order's payment is created with (native, jsapi, app, h5, page, wap; NULL: the channel's
-- default), kept on the order so that a fallback, a retry after a crash and the order view use
-- the same one, and the payer's WeChat openid for jsapi (personal: cleared on erasure and after
-- the retention period, apss/store/privacy.py CLEARED).
ALTER TABLE orders ADD COLUMN payment_flow TEXT;
ALTER TABLE orders ADD COLUMN payer_openid TEXT;
