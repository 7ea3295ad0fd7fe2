"""Loads the selector's table with pyiceberg's SqlCatalog and scans it.

Prints one JSON object: the row count and the distinct trace ids.
"""
import argparse
import json

from pyiceberg.catalog.sql import SqlCatalog

parser = argparse.ArgumentParser()
parser.add_argument("--catalog-name", default="tail_sampling")
parser.add_argument("--catalog-uri", required=True, help="SQLAlchemy URI, e.g. sqlite:////abs/catalog.db")
parser.add_argument("--warehouse", required=True)
parser.add_argument("--table", default="default.spans")
args = parser.parse_args()

catalog = SqlCatalog(args.catalog_name, uri=args.catalog_uri, warehouse=args.warehouse)
table = catalog.load_table(args.table)
arrow = table.scan().to_arrow()
print(json.dumps({
    "rows": arrow.num_rows,
    "trace_ids": sorted(set(arrow.column("trace_id").to_pylist())),
    "partition_spec": str(table.spec()),
    "columns": arrow.schema.names,
}))
