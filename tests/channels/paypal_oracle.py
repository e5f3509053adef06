"""Oracle run by test_paypal.py inside its own venv: paypalrestsdk 1.13.3 (needs pyOpenSSL 23.3.0,
cryptography 41) and paypal-server-sdk 2.4.0 (whose dependency apimatic-core installs a top-level
`tests` package into site-packages, which would shadow this repository's `tests`: another reason
to keep it out of the main interpreter).

stdin JSON, any of:
  "webhooks": [{"transmission_id", "timestamp", "webhook_id", "body", "cert_url", "cert_pem", "sig", "auth_algo"}]
      -> "webhooks": [{"expected_sig", "verify_signature", "verify"}]
     `verify` is the SDK's full WebhookEvent.verify with only the network fetch (_get_cert) and
     the DigiCert chain check stubbed: its common-name, expiry and algorithm mapping are real.
  "models": {"order": {...}, "refund": {...}, "bodies": {"order", "refund", "capture"}, "response": {...}}
      -> "models": {"order", "refund", "capture", "roundtrip": {"order", "refund"}, "enums", "response"}
The SDK prints its exceptions to stdout, so it runs with stdout redirected to stderr.
"""

import contextlib
import json
import sys


def webhooks(cases):
    from OpenSSL import crypto
    from paypalrestsdk.notifications import WebhookEvent

    results = []
    for case in cases:
        cert = crypto.load_certificate(crypto.FILETYPE_PEM, case["cert_pem"])
        WebhookEvent._get_cert = staticmethod(lambda url, cert=cert, expected=case["cert_url"]: cert if url == expected else None)
        WebhookEvent._verify_certificate_chain = classmethod(lambda cls, cert: True)
        args = (case["transmission_id"], case["timestamp"], case["webhook_id"], case["body"])
        results.append({
            "expected_sig": WebhookEvent._get_expected_sig(*args),
            "verify_signature": WebhookEvent._verify_signature(*args, cert, case["sig"], "sha256WithRSAEncryption"),
            "verify": WebhookEvent.verify(*args, case["cert_url"], case["sig"], case["auth_algo"]),
        })
    return results


def _enum(cls):
    return sorted(value for name, value in vars(cls).items() if name.isupper() and isinstance(value, str))


def models(spec):
    from paypalserversdk.api_helper import APIHelper
    from paypalserversdk.models.amount_with_breakdown import AmountWithBreakdown
    from paypalserversdk.models.capture_status import CaptureStatus
    from paypalserversdk.models.money import Money
    from paypalserversdk.models.order import Order
    from paypalserversdk.models.order_capture_request import OrderCaptureRequest
    from paypalserversdk.models.order_request import OrderRequest
    from paypalserversdk.models.order_status import OrderStatus
    from paypalserversdk.models.payment_source import PaymentSource
    from paypalserversdk.models.paypal_wallet import PaypalWallet
    from paypalserversdk.models.paypal_wallet_experience_context import (
        PaypalWalletExperienceContext,
    )
    from paypalserversdk.models.purchase_unit_request import PurchaseUnitRequest
    from paypalserversdk.models.refund_request import RefundRequest
    from paypalserversdk.models.refund_status import RefundStatus

    def as_json(model):
        return json.loads(APIHelper.json_serialize(model))

    o = spec["order"]
    order = OrderRequest(
        intent="CAPTURE",
        purchase_units=[PurchaseUnitRequest(
            amount=AmountWithBreakdown(currency_code=o["currency"], value=o["value"]), reference_id=o["reference_id"],
            description=o["description"], custom_id=o["custom_id"], invoice_id=o["invoice_id"],
        )],
        payment_source=PaymentSource(paypal=PaypalWallet(experience_context=PaypalWalletExperienceContext(
            shipping_preference="NO_SHIPPING", user_action="PAY_NOW", return_url=o["return_url"], cancel_url=o["cancel_url"],
        ))),
    )
    r = spec["refund"]
    refund = RefundRequest(
        amount=Money(currency_code=r["currency"], value=r["value"]), custom_id=r["custom_id"],
        invoice_id=r["invoice_id"], note_to_payer=r["note_to_payer"],
    )
    bodies = spec["bodies"]
    parsed = Order.from_dictionary(spec["response"])
    return {
        "order": as_json(order),
        "refund": as_json(refund),
        "capture": as_json(OrderCaptureRequest()),
        # Unknown fields are dropped by from_dictionary: a round trip shows every field is known.
        "roundtrip": {
            "order": as_json(OrderRequest.from_dictionary(bodies["order"])),
            "refund": as_json(RefundRequest.from_dictionary(bodies["refund"])),
        },
        "enums": {"order": _enum(OrderStatus), "capture": _enum(CaptureStatus), "refund": _enum(RefundStatus)},
        "response": {
            "id": parsed.id, "status": parsed.status, "rels": [link.rel for link in parsed.links],
            "custom_id": parsed.purchase_units[0].custom_id, "value": parsed.purchase_units[0].amount.value,
        },
    }


def main():
    request = json.load(sys.stdin)
    answer = {}
    with contextlib.redirect_stdout(sys.stderr):
        if "webhooks" in request:
            answer["webhooks"] = webhooks(request["webhooks"])
        if "models" in request:
            answer["models"] = models(request["models"])
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
