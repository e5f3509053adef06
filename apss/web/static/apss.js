/* APSS embeddable checkout (README "Embedding the checkout"). Served by APSS itself at /js/apss.js:
 *
 *   <script src="https://pay.example.com/js/apss.js"></script>
 *   APSS.openCheckout({publishableKey: "pk_test_...", productId: "prd_...", playerId: "alice",
 *                      mode: "overlay", onEvent: function (e) { ... e.type is paid | failed | closed }});
 *
 * Options: `url` (a checkout_url your game server got), or `publishableKey` with `orderId` (an
 * order your game server made), or `publishableKey` with `productId`, `playerId` and optionally
 * `quantity`, `currency`, `coupon`, `returnUrl`, `idempotencyKey` (a product you marked
 * browser_sellable). `mode`: "overlay" (default: the checkout in an iframe over the page) or
 * "redirect" (the whole window goes to the checkout). `apssUrl`: the APSS address, by default
 * the address this script was loaded from.
 * Returns a Promise of {orderId, checkoutUrl, close()}; it rejects with an Error carrying the
 * API's `code` and `status` when the checkout cannot be started.
 * Events come from the checkout page by postMessage; only messages from the APSS origin and the
 * overlay's own frame are taken, and each of paid / failed is reported once. */
(function () {
  "use strict";
  var current = document.currentScript;
  var scriptOrigin = current && current.src ? new URL(current.src, location.href).origin : null;
  var EVENTS = ["paid", "failed", "closed"];

  function originOf(options) {
    var origin = options.apssUrl ? new URL(options.apssUrl, location.href).origin : scriptOrigin;
    if (!origin) throw new Error("APSS: give apssUrl (the script's own address is unknown)");
    return origin;
  }

  function call(origin, method, path, key, body, idempotencyKey) {
    var headers = {"Authorization": "Bearer " + key};
    if (body) headers["Content-Type"] = "application/json";
    if (idempotencyKey) headers["Idempotency-Key"] = idempotencyKey;
    return fetch(origin + path, {method: method, headers: headers, mode: "cors", credentials: "omit",
                                 body: body ? JSON.stringify(body) : undefined})
      .then(function (response) {
        return response.json().then(function (json) {
          if (response.ok) return json;
          var detail = json && json.error ? json.error : {};
          var error = new Error(detail.message || ("APSS answered " + response.status));
          error.code = detail.code; error.status = response.status; error.param = detail.param;
          throw error;
        });
      });
  }

  function session(options, origin) {
    if (options.url) {
      if (new URL(options.url, location.href).origin !== origin) {
        return Promise.reject(new Error("APSS: the checkout url is not on " + origin));
      }
      return Promise.resolve({checkout_url: options.url, order_id: options.orderId || null});
    }
    if (!options.publishableKey) return Promise.reject(new Error("APSS: give url, or publishableKey"));
    if (options.orderId) {
      return call(origin, "GET", "/v1/checkout/sessions/" + encodeURIComponent(options.orderId), options.publishableKey);
    }
    var body = {product_id: options.productId, player_id: options.playerId, quantity: options.quantity || 1};
    if (options.currency) body.currency = options.currency;
    if (options.coupon) body.coupon = options.coupon;
    if (options.returnUrl) body.return_url = options.returnUrl;
    return call(origin, "POST", "/v1/checkout/sessions", options.publishableKey, body, options.idempotencyKey);
  }

  function overlay(checkoutUrl, origin, orderId, emit) {
    var backdrop = document.createElement("div");
    backdrop.setAttribute("data-apss-overlay", "");
    backdrop.style.cssText = "position:fixed;inset:0;z-index:2147483647;background:rgba(15,23,42,.55);" +
      "display:flex;align-items:center;justify-content:center";
    var frame = document.createElement("iframe");
    var src = new URL(checkoutUrl);
    src.searchParams.set("embed", location.origin);  // the checkout posts its events to this origin only
    frame.src = src.href;
    frame.title = "Checkout";
    frame.setAttribute("data-apss-checkout", "");
    frame.style.cssText = "width:min(460px,100vw);height:min(760px,100vh);border:0;border-radius:14px;background:#fff";
    var button = document.createElement("button");
    button.type = "button";
    button.textContent = "\u00d7";
    button.setAttribute("aria-label", "Close");
    button.setAttribute("data-apss-close", "");
    button.style.cssText = "position:absolute;top:12px;right:12px;width:40px;height:40px;border:0;border-radius:20px;" +
      "background:#fff;font-size:24px;cursor:pointer";
    backdrop.appendChild(frame);
    backdrop.appendChild(button);
    var seen = {}, open = true;

    function close(report) {
      if (!open) return;
      open = false;
      window.removeEventListener("message", onMessage);
      backdrop.remove();
      if (report) emit({type: "closed", orderId: orderId, status: null});
    }

    function onMessage(event) {
      if (event.origin !== origin || event.source !== frame.contentWindow) return;
      var data = event.data;
      if (!data || data.source !== "apss" || EVENTS.indexOf(data.event) < 0) return;
      if (data.event === "closed") { close(true); return; }
      if (seen[data.event]) return;
      seen[data.event] = true;
      emit({type: data.event, orderId: data.order_id || orderId, status: data.status || null});
    }

    window.addEventListener("message", onMessage);
    button.addEventListener("click", function () { close(true); });
    document.body.appendChild(backdrop);
    return function () { close(false); };
  }

  function openCheckout(options) {
    options = options || {};
    var emit = function (event) {
      if (typeof options.onEvent !== "function") return;
      try { options.onEvent(event); } catch (error) { setTimeout(function () { throw error; }); }
    };
    var origin;
    try { origin = originOf(options); } catch (error) { return Promise.reject(error); }
    return session(options, origin).then(function (made) {
      var handle = {orderId: made.order_id, checkoutUrl: made.checkout_url, close: function () {}};
      if (options.mode === "redirect") {
        location.assign(made.checkout_url);
      } else {
        handle.close = overlay(made.checkout_url, origin, made.order_id, emit);
      }
      return handle;
    });
  }

  window.APSS = {openCheckout: openCheckout, version: 1};
})();
