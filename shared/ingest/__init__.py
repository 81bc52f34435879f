"""Ingest: REST upserts, the CSV importer and the bulk writers, as one small package.

- common: the per-record outcome, UTC time, chunked ON CONFLICT inserts
- columns: every table's column lists and the CSV files' columns
- order_identity: the order content hash and total every writer of orders uses
- orders, postgres, sqlite, bulk: the one order writer (`write_orders`) and bulk table writers
- aggregates: customers' running aggregates
- records: REST upserts (customers, orders, events, products, promotions)
- reading, rules, importer: CSV streaming, the schemas' rules for CSV text, `import_csv`

The names other modules import are re-exported here.
"""

from shared.ingest.aggregates import aggregates_select, refresh_customer_aggregates, session_timezone, shop_day
from shared.ingest.bulk import write_orders
from shared.ingest.common import (
    CHUNK,
    STATUS_TRANSITIONS,
    BatchOutcome,
    dialect_insert,
    insert_ignoring_duplicates,
    to_naive_utc,
    upsert,
    utcnow,
)
from shared.ingest.importer import ImportSummary, import_csv
from shared.ingest.order_identity import canonical_order_hash, order_content_hash, order_total
from shared.ingest.reading import ImportFileError
from shared.ingest.records import (
    event_content_key,
    event_key,
    insert_events,
    upsert_customers,
    upsert_orders,
    upsert_products,
    upsert_promotions,
)

__all__ = [
    "CHUNK",
    "STATUS_TRANSITIONS",
    "BatchOutcome",
    "ImportFileError",
    "ImportSummary",
    "aggregates_select",
    "canonical_order_hash",
    "dialect_insert",
    "event_content_key",
    "event_key",
    "import_csv",
    "insert_events",
    "insert_ignoring_duplicates",
    "order_content_hash",
    "order_total",
    "refresh_customer_aggregates",
    "session_timezone",
    "shop_day",
    "to_naive_utc",
    "upsert",
    "upsert_customers",
    "upsert_orders",
    "upsert_products",
    "upsert_promotions",
    "utcnow",
    "write_orders",
]
