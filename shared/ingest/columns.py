"""Column lists, written once: what each table's writers fill, and what a CSV file of each kind has."""

from __future__ import annotations

# Whole rows, as the bulk writers (CSV import, demo shop, order writer) insert them.
CUSTOMER_COLUMNS = ("customer_id", "joined_at", "channel", "community_member", "opted_out", "attributes",
                    "placeholder", "paid_orders", "net_spend", "purchase_days", "updated_at")
PRODUCT_COLUMNS = ("sku", "name", "category", "price", "cost", "stock", "active", "repeat_purchase", "placeholder",
                   "updated_at")
PROMOTION_COLUMNS = ("promotion_id", "kind", "threshold", "discount", "starts_at", "ends_at", "category", "updated_at")
ORDER_COLUMNS = ("order_id", "customer_id", "placed_at", "status", "total", "content_hash", "updated_at")
LINE_COLUMNS = ("order_id", "line_no", "sku", "quantity", "unit_price")
EVENT_COLUMNS = ("event_key", "customer_id", "type", "sku", "occurred_at")

# What a record (REST or CSV) sets; the rest of a row is the key, bookkeeping or aggregates.
CUSTOMER_FIELDS = ("joined_at", "channel", "community_member", "opted_out", "attributes")
PRODUCT_FIELDS = PRODUCT_COLUMNS[1:8]
PROMOTION_FIELDS = PROMOTION_COLUMNS[1:-1]
# A CSV customer row cannot carry attributes: an update leaves the stored ones.
CUSTOMER_IMPORT_UPDATES = ("joined_at", "channel", "community_member", "opted_out", "placeholder", "updated_at")

# Placeholder rows for ids an order names before its customer or product was sent.
PLACEHOLDER_CUSTOMER_COLUMNS = ("customer_id", "community_member", "opted_out", "attributes", "placeholder",
                                "paid_orders", "net_spend", "purchase_days", "updated_at")
PLACEHOLDER_PRODUCT_COLUMNS = ("sku", "name", "price", "active", "repeat_purchase", "placeholder", "updated_at")

# CSV files: (required, optional) columns per kind; the README's "Importing history" lists them.
IMPORT_COLUMNS = {
    "orders": (("order_id", "customer_id", "placed_at", "sku", "quantity", "unit_price"), ("status",)),
    "customers": (("customer_id",), ("joined_at", "channel", "community_member", "opted_out")),
    "products": (("sku", "name", "category", "price"), ("cost", "stock", "active", "repeat_purchase")),
}
