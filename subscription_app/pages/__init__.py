"""Pages, one module each; `subscription_app.py` registers them."""
