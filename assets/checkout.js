// Card collection with Stripe.js. Card details stay inside Stripe's Element: this code only
// ever hands our backend the payment method id that Stripe returns.
(function () {
  "use strict";
  if (window.saCheckout) return; // loaded twice (the page's tag and a loader): keep the first
  let stripe = null;
  let card = null;
  let lastAttempt = null; // the last Subscribe press confirmed (see confirmSetup)
  let loadFailure = null; // why the latest mount failed, to say again on Subscribe

  // How long Stripe.js is waited for before the card form says it could not be loaded: a
  // tag that neither loads nor fails (a network that drops packets, or a failure that came
  // before anyone listened) must not leave the form loading for good.
  const LOAD_TIMEOUT_MS = 10000;

  // Listen to a Stripe.js tag as early as possible: its outcome, marked on it.
  function watch(script) {
    if (script.dataset.stripeJs === "watched") return;
    script.dataset.stripeJs = "watched";
    script.addEventListener("load", function () { script.dataset.outcome = "loaded"; });
    script.addEventListener("error", function () { script.dataset.outcome = "failed"; });
  }
  // The checkout page's own tag (async, in its head, ahead of this script).
  const pageTag = document.querySelector("script[data-stripe-js]");
  if (pageTag) watch(pageTag);

  function loadScript(url) {
    if (window.Stripe) return Promise.resolve();
    return new Promise(function (resolve, reject) {
      let script = document.querySelector("script[data-stripe-js]");
      if (script && script.dataset.outcome === "failed") {
        // A failed tag never fires again: take it away, so that this try adds a new one.
        script.remove();
        script = null;
      }
      if (script && script.dataset.outcome === "loaded") {
        resolve(); // it ran but defined no Stripe: the mount says the form failed
        return;
      }
      const added = !script;
      if (added) {
        script = document.createElement("script");
        script.src = url;
        script.async = true;
        script.setAttribute("data-stripe-js", "1");
      }
      watch(script);
      const timer = setTimeout(function () {
        script.remove(); // the next try starts afresh
        reject(new Error("Stripe.js did not load in time"));
      }, LOAD_TIMEOUT_MS);
      script.addEventListener("load", function () {
        clearTimeout(timer);
        resolve();
      });
      script.addEventListener("error", function () {
        clearTimeout(timer);
        script.remove();
        reject(new Error("Stripe.js did not load"));
      });
      if (added) document.head.appendChild(script);
    });
  }

  const CHECK_DETAILS =
    "Your card details are incomplete or incorrect. Check the number, expiry date and security code.";

  // Stripe's card and validation errors are written for people; anything else is not.
  function message(error, fallback) {
    if (!error) return fallback;
    if ((error.type === "card_error" || error.type === "validation_error") && error.message) {
      return error.message;
    }
    if (error.type === "invalid_request_error" || /bad request/i.test(error.message || "")) {
      return CHECK_DETAILS;
    }
    return error.message || fallback;
  }

  let mounting = null; // the latest mount: a promise of its answer
  let mountedOn = null; // ... and the #card-element it is for

  async function mountCard(publishableKey, jsUrl) {
    try {
      await loadScript(jsUrl);
      const target = document.getElementById("card-element");
      if (!target) return "The card form is missing from the page.";
      if (card) {
        try { card.unmount(); } catch (e) { /* already gone */ }
      }
      target.innerHTML = "";
      stripe = window.Stripe(publishableKey);
      card = stripe.elements().create("card", { hidePostalCode: false });
      card.mount("#card-element");
      loadFailure = null;
      return "ok";
    } catch (e) {
      loadFailure = "The card form could not be loaded. Check your connection and reload the page.";
      return loadFailure;
    }
  }

  window.saCheckout = {
    // Load Stripe.js ahead of the checkout page (the plan page does). Resolves to "ok".
    preload: async function (jsUrl) {
      try {
        if (jsUrl) await loadScript(jsUrl);
        return "ok";
      } catch (e) {
        return "failed"; // the checkout page tries again, and says so if it cannot
      }
    },
    // Mount the card Element into #card-element. Resolves to "ok" or an error message.
    // Several callers ask (this script as it loads, the page as it shows the field, and
    // the page again to tell the server): a call for the element already being mounted
    // gets that mount's answer instead of a new Element.
    mount: function (publishableKey, jsUrl) {
      const target = document.getElementById("card-element");
      if (mounting && target && mountedOn === target && target.isConnected) return mounting;
      const attempt = (mounting = mountCard(publishableKey, jsUrl));
      mountedOn = target;
      attempt.then(function (result) {
        if (result !== "ok" && mounting === attempt) mounting = null; // a retry may work
      });
      return attempt;
    },
    // Tokenize the card at Stripe by confirming the SetupIntent (3-D Secure runs here when
    // the card needs it). Resolves to {payment_method_id} or {error}. `attempt` numbers the
    // press (the server moves it on after each answer): a second press of one attempt, as
    // in a double click, resolves to {ignored} and asks Stripe nothing.
    confirmSetup: async function (clientSecret, attempt) {
      if (attempt !== undefined && attempt === lastAttempt) return { ignored: true };
      lastAttempt = attempt;
      if (!stripe || !card) return { error: loadFailure || "The card form is not ready yet." };
      if (!clientSecret) return { error: "The card form is not ready yet." };
      try {
        const result = await stripe.confirmCardSetup(clientSecret, {
          payment_method: { card: card },
        });
        if (result.error) {
          return {
            error: message(result.error, "Your card could not be used."),
            // Only a card Stripe refused counts as a card attempt (card testing), not a typo.
            card_refused: result.error.type === "card_error",
            // This SetupIntent cannot be confirmed any more: the server makes a new one.
            renew: result.error.code === "setup_intent_unexpected_state",
          };
        }
        let pm = result.setupIntent && result.setupIntent.payment_method;
        if (pm && typeof pm === "object") pm = pm.id;
        if (!pm) return { error: "Your card could not be used." };
        return { payment_method_id: pm };
      } catch (e) {
        return { error: "We could not reach Stripe. Nothing was charged; please try again." };
      }
    },
    // Finish the first payment's authentication (3-D Secure). Resolves to {status} or {error}.
    confirmPayment: async function (clientSecret) {
      if (!stripe) return { error: "The card form is not ready yet." };
      try {
        const result = await stripe.confirmCardPayment(clientSecret);
        if (result.error) return { error: message(result.error, "Card authentication failed.") };
        return { status: (result.paymentIntent && result.paymentIntent.status) || "unknown" };
      } catch (e) {
        return { error: "Card authentication could not be completed." };
      }
    },
  };

  // On a full load of the checkout page the card field is in the server's HTML, before
  // the app's scripts have started: mount it now (it carries what Stripe.js needs), not
  // when the page goes live. The page's own call later gets this mount's answer.
  function mountIfShown() {
    const target = document.getElementById("card-element");
    if (!target || !target.dataset.publishableKey || !target.dataset.jsUrl) return false;
    window.saCheckout.mount(target.dataset.publishableKey, target.dataset.jsUrl);
    return true;
  }
  if (!mountIfShown() && document.readyState === "loading") {
    // This script ran before the parser reached the field: mount as it arrives.
    const observer = new MutationObserver(function () {
      if (mountIfShown()) observer.disconnect();
    });
    observer.observe(document, { childList: true, subtree: true });
    document.addEventListener("DOMContentLoaded", function () { observer.disconnect(); }, { once: true });
  }
})();
