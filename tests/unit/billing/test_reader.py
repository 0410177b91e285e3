"""The reader accepts today's and older Stripe shapes alike."""

from datetime import UTC, datetime

from subscription_app.billing.reader import read_invoice_payment, read_subscription

START, END = 1_790_000_000, 1_792_592_000


def test_current_api_shape_period_on_items_and_payment_via_invoice_payments():
    snapshot = read_subscription(
        {
            "id": "sub_new",
            "customer": "cus_1",
            "status": "incomplete",
            "start_date": START,
            "cancel_at_period_end": False,
            "items": {
                "data": [
                    {
                        "price": {"id": "price_1"},
                        "current_period_start": START,
                        "current_period_end": END,
                    }
                ]
            },
            "latest_invoice": {
                "id": "in_1",
                "confirmation_secret": {"client_secret": "pi_1_secret_x"},
                "payments": {"data": [{"payment": {"payment_intent": "pi_1"}}]},
            },
        }
    )
    assert snapshot.price_id == "price_1"
    assert snapshot.current_period_end == datetime.fromtimestamp(END, UTC)
    assert snapshot.started_at == datetime.fromtimestamp(START, UTC)
    assert snapshot.payment.payment_intent_id == "pi_1"
    assert snapshot.payment.client_secret == "pi_1_secret_x"
    assert snapshot.payment.status is None  # needs a PaymentIntent read


def test_legacy_shape_period_on_subscription_and_expanded_payment_intent():
    snapshot = read_subscription(
        {
            "id": "sub_old",
            "customer": {"id": "cus_2", "object": "customer"},
            "status": "active",
            "created": START,
            "current_period_end": END,
            "plan": {"id": "plan_9"},
            "items": {"data": [{"plan": {"id": "plan_9"}}]},
            "latest_invoice": {
                "id": "in_2",
                "payment_intent": {
                    "id": "pi_2",
                    "status": "requires_payment_method",
                    "client_secret": "pi_2_secret",
                    "last_payment_error": {"code": "card_declined", "message": "Declined"},
                },
            },
            "canceled_at": None,
        }
    )
    assert snapshot.customer_id == "cus_2"
    assert snapshot.price_id == "plan_9"
    assert snapshot.started_at == datetime.fromtimestamp(START, UTC)
    assert snapshot.current_period_end == datetime.fromtimestamp(END, UTC)
    assert snapshot.payment.status == "requires_payment_method"
    assert snapshot.payment.error_code == "card_declined"


def test_unexpanded_invoice_and_missing_fields_do_not_crash():
    snapshot = read_subscription({"id": "sub_min", "customer": "cus_3", "latest_invoice": "in_3"})
    assert snapshot.status == "incomplete"
    assert snapshot.latest_invoice_id == "in_3"
    assert snapshot.payment is None
    assert snapshot.current_period_end is None
    assert read_invoice_payment({}) is None
