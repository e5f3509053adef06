"""Languages of the payer pages (English and Chinese) and money formatted per locale with Babel.

Money stays integer minor units until the very edge: Decimal(minor).scaleb(-exponent) is exact,
and Babel only decides symbols, grouping and placement (`¥123.45` in zh, `CN¥123.45` in en)."""

from __future__ import annotations

from decimal import Decimal

from babel.numbers import format_currency, format_decimal

from apss.domain.money import CURRENCY_EXPONENTS

__all__ = ["LANGUAGES", "choose_language", "major_units", "minor_units", "money", "text"]

LANGUAGES = ("en", "zh")
_BABEL_LOCALES = {"en": "en_US", "zh": "zh_Hans_CN"}
_ACCEPT_LANGUAGE_ENTRIES_MAX = 20

_TEXT: dict[str, dict[str, str]] = {
    "en": {
        "checkout": "Checkout", "order": "Order", "total": "Total", "expires_in": "Reserved for",
        "expired_note": "This order has expired. Please start a new purchase in the game.",
        "channels": "Payment methods", "pay_with": "Pay with {channel}", "continue": "Continue to payment",
        "scan": "Scan with your payment app", "in_app": "Complete the payment in the app.",
        "waiting": "Waiting for the payment provider…", "paid": "Payment received",
        "paid_note": "Thank you! Your items are on their way to your account.",
        "fulfilled_note": "Thank you! Your items have been delivered.",
        "back": "Back to the store", "failed": "Payment failed", "failed_note": "No money was taken. You may try again from the game.",
        "canceled": "Order canceled", "expired": "Order expired", "refunded": "Order refunded",
        "not_found": "This link is not valid", "not_found_note": "It may have expired.",
        "sandbox": "APSS Sandbox · test mode", "sandbox_note": "No real money moves. Pay sends the sandbox's signed "
        "payment.succeeded callback; Fail sends payment.failed.", "pay": "Pay", "fail": "Fail",
        "sandbox_paid": "Payment paid", "sandbox_declined": "Payment declined",
        "sandbox_done_note": "The merchant is notified by callback within a second.", "nothing": "Nothing to do",
        "sandbox_closed": "Payment closed", "sandbox_closed_note": "This order ended before it was paid, so the payment "
        "was closed: nothing can be paid here and no money moves. Please start a new purchase in the game.",
        "three_ds_title": "3-D Secure check", "three_ds_note": "Your card issuer asks you to confirm this payment "
        "(sandbox stand-in for the 3-D Secure challenge).", "three_ds_pass": "Pass the check",
        "three_ds_fail": "Fail the check",
        "qty": "×", "language": "中文", "close": "Close",
    },
    "zh": {
        "checkout": "收银台", "order": "订单", "total": "合计", "expires_in": "剩余支付时间",
        "expired_note": "订单已过期，请回到游戏重新购买。",
        "channels": "支付方式", "pay_with": "使用 {channel} 支付", "continue": "去支付",
        "scan": "请使用支付应用扫码", "in_app": "请在应用内完成支付。",
        "waiting": "正在等待支付结果…", "paid": "支付成功",
        "paid_note": "谢谢！商品正在发放到您的账户。", "fulfilled_note": "谢谢！商品已发放。",
        "back": "返回商店", "failed": "支付失败", "failed_note": "未扣款，您可以回到游戏重试。",
        "canceled": "订单已取消", "expired": "订单已过期", "refunded": "订单已退款",
        "not_found": "链接无效", "not_found_note": "链接可能已过期。",
        "sandbox": "APSS 沙箱 · 测试模式", "sandbox_note": "不会产生真实扣款。“支付”发送沙箱签名的 payment.succeeded "
        "回调；“失败”发送 payment.failed。", "pay": "支付", "fail": "失败",
        "sandbox_paid": "已支付", "sandbox_declined": "已拒绝",
        "sandbox_done_note": "商户将在一秒内收到回调通知。", "nothing": "无需操作",
        "sandbox_closed": "支付已关闭", "sandbox_closed_note": "该订单在支付前已结束，支付已关闭：此处无法再支付，也不会扣款。请回到游戏重新购买。",
        "three_ds_title": "3-D Secure 验证", "three_ds_note": "发卡行要求您确认此笔支付（沙箱模拟的 3-D Secure 验证）。",
        "three_ds_pass": "验证通过", "three_ds_fail": "验证失败",
        "qty": "×", "language": "English", "close": "关闭",
    },
}
assert set(_TEXT["en"]) == set(_TEXT["zh"]), "every text exists in every language"


def text(lang: str, key: str, **values: str) -> str:
    template = _TEXT[lang][key]
    return template.format(**values) if values else template


def choose_language(*, query: str | None, accept_language: str | None) -> str:
    """`?lang=` wins; else the best-weighted Accept-Language entry we speak; else English."""
    if query in LANGUAGES:
        return query
    best, best_q = "en", -1.0
    for entry in (accept_language or "").split(",")[:_ACCEPT_LANGUAGE_ENTRIES_MAX]:
        tag, _, params = entry.strip().partition(";")
        primary = tag.strip().lower().split("-")[0]
        if primary not in LANGUAGES:
            continue
        weight = 1.0
        if params.strip().startswith("q="):
            try:
                weight = float(params.strip()[2:])
            except ValueError:
                continue
        if weight > best_q:
            best, best_q = primary, weight
    return best


def money(amount_minor: int, currency: str, lang: str) -> str:
    """`12345, "CNY", "zh"` -> `¥123.45`; exact (Decimal scaled by the ISO exponent, never float).
    A merchant's virtual currency (not ISO 4217, whole units) is the grouped number and its code:
    `1,200 GEMS`."""
    assert isinstance(amount_minor, int) and not isinstance(amount_minor, bool)
    if currency not in CURRENCY_EXPONENTS:
        return f"{format_decimal(amount_minor, locale=_BABEL_LOCALES[lang])} {currency}"
    exponent = CURRENCY_EXPONENTS[currency]
    major = Decimal(amount_minor).scaleb(-exponent)
    assert major.as_tuple().exponent >= -exponent or amount_minor == 0
    return format_currency(major, currency, locale=_BABEL_LOCALES[lang])


def major_units(amount_minor: int, currency: str) -> str:
    """The plain decimal a person types for an amount (`250, "USD"` -> `2.50`): a form's default."""
    exponent = CURRENCY_EXPONENTS.get(currency, 0)
    return f"{Decimal(amount_minor).scaleb(-exponent):.{exponent}f}"


def minor_units(typed: str, currency: str) -> int | None:
    """What a person typed (`2.5`, `2.50`, `1,000`) in minor units, exactly; None if it is not an
    amount of this currency (a fraction finer than its minor unit, a sign, not a number)."""
    exponent = CURRENCY_EXPONENTS.get(currency, 0)
    text_ = typed.strip().replace(",", "").replace("_", "")
    if (len(text_) > 30 or not any(ch.isdigit() for ch in text_) or text_.count(".") > 1
            or not all(ch.isdigit() or ch == "." for ch in text_)):
        return None
    scaled = Decimal(text_).scaleb(exponent)
    if scaled != scaled.to_integral_value():
        return None
    return int(scaled)
