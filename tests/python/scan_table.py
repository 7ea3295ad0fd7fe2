"""Loads the selector's table with pyiceberg's SqlCatalog and scans it.

Works for a SQLite or PostgreSQL catalog, and for a warehouse on local files
or on S3 (give the --s3-* options). Prints one JSON object: the row count, the
distinct trace ids, the partition spec and the column names.
"""
import argparse
import json

from pyiceberg.catalog.sql import SqlCatalog

parser = argparse.ArgumentParser()
parser.add_argument("--catalog-name", default="tail_sampling")
parser.add_argument("--catalog-uri", required=True,
                    help="SQLAlchemy URI, e.g. sqlite:////abs/catalog.db or postgresql+psycopg2://u@h:p/db")
parser.add_argument("--warehouse", required=True)
parser.add_argument("--table", default="default.spans")
parser.add_argument("--s3-endpoint")
parser.add_argument("--s3-access-key-id")
parser.add_argument("--s3-secret-access-key")
parser.add_argument("--s3-region", default="us-east-1")
args = parser.parse_args()

props = {"uri": args.catalog_uri, "warehouse": args.warehouse}
if args.s3_endpoint:
    props.update({
        "s3.endpoint": args.s3_endpoint,
        "s3.access-key-id": args.s3_access_key_id,
        "s3.secret-access-key": args.s3_secret_access_key,
        "s3.region": args.s3_region,
        "s3.force-virtual-addressing": "false",
    })
catalog = SqlCatalog(args.catalog_name, **props)
table = catalog.load_table(args.table)
arrow = table.scan().to_arrow()
print(json.dumps({
    "rows": arrow.num_rows,
    "trace_ids": sorted(set(arrow.column("trace_id").to_pylist())),
    "partition_spec": str(table.spec()),
    "columns": arrow.schema.names,
    "location": table.location(),
}))
