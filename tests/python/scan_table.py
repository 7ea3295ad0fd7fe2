"""Loads the selector's table with pyiceberg and scans it; with --duckdb, DuckDB
reads the same snapshot too, through its Iceberg extension.

Works for a SQL catalog (SQLite or PostgreSQL) and for a REST catalog (give
--catalog-type rest and --credential), and for a warehouse on local files or
on S3 (give the --s3-* options). Prints one JSON object: the row count, the
distinct trace ids, the partition spec, the column names, the sum and null
count of `sample_rate` when the table has it, and, with --duckdb, DuckDB's
figures for the same.
"""
import argparse
import glob
import json
import os

parser = argparse.ArgumentParser()
parser.add_argument("--catalog-type", choices=["sql", "rest"], default="sql")
parser.add_argument("--catalog-name", default="tail_sampling")
parser.add_argument("--catalog-uri", required=True,
                    help="SQLAlchemy URI (sqlite:////abs/catalog.db, postgresql+psycopg2://u@h:p/db) "
                         "or the REST catalog's URL")
parser.add_argument("--warehouse", required=True)
parser.add_argument("--credential", help="REST: OAuth2 client credentials id:secret")
parser.add_argument("--table", default="default.spans")
parser.add_argument("--s3-endpoint")
parser.add_argument("--s3-access-key-id")
parser.add_argument("--s3-secret-access-key")
parser.add_argument("--s3-region", default="us-east-1")
parser.add_argument("--duckdb", action="store_true", help="also read the table with DuckDB")
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
if args.catalog_type == "rest":
    from pyiceberg.catalog.rest import RestCatalog
    if args.credential:
        props["credential"] = args.credential
    catalog = RestCatalog(args.catalog_name, **props)
else:
    from pyiceberg.catalog.sql import SqlCatalog
    catalog = SqlCatalog(args.catalog_name, **props)

table = catalog.load_table(args.table)
arrow = table.scan().to_arrow()
out = {
    "rows": arrow.num_rows,
    "trace_ids": sorted(set(arrow.column("trace_id").to_pylist())),
    "partition_spec": str(table.spec()),
    "columns": arrow.schema.names,
    "location": table.location(),
    "metadata_location": table.metadata_location,
}
# Whether each live data file's rows are in (trace_id, start_time) order, as
# compaction writes them; read straight from the Parquet file, in file order.
import pyarrow.parquet as pq
files_sorted = []
for task in table.scan().plan_files():
    with table.io.new_input(task.file.file_path).open() as f:
        t = pq.read_table(f, columns=["trace_id", "start_time"])
    keys = list(zip(t.column("trace_id").to_pylist(), t.column("start_time").to_pylist()))
    files_sorted.append(all(a <= b for a, b in zip(keys, keys[1:])))
out["files_sorted"] = files_sorted
has_sample_rate = "sample_rate" in arrow.schema.names
if has_sample_rate:
    rates = arrow.column("sample_rate").to_pylist()
    out["sample_rate_sum"] = sum(r for r in rates if r is not None)
    out["sample_rate_nulls"] = sum(1 for r in rates if r is None)


def load_extension(con, name):
    """DuckDB can't download extensions here: load the file its wheel ships."""
    module = __import__("duckdb_extension_" + name)
    pattern = os.path.join(os.path.dirname(module.__file__), "extensions", "*", name + ".duckdb_extension")
    paths = glob.glob(pattern)
    if not paths:
        raise SystemExit(f"no {name}.duckdb_extension under {pattern}")
    con.execute(f"LOAD '{paths[0]}'")


if args.duckdb:
    import duckdb

    con = duckdb.connect()
    for ext in ("httpfs", "avro", "iceberg"):
        load_extension(con, ext)
    if args.s3_endpoint:
        host = args.s3_endpoint.split("://", 1)[-1]
        con.execute(
            "CREATE SECRET (TYPE s3, KEY_ID ?, SECRET ?, ENDPOINT ?, URL_STYLE 'path', USE_SSL ?, REGION ?)",
            [args.s3_access_key_id, args.s3_secret_access_key, host,
             args.s3_endpoint.startswith("https"), args.s3_region],
        )
    location = table.metadata_location
    if location.startswith("file://"):
        location = location[len("file://"):]
    rows = con.execute(f"SELECT count(*) FROM iceberg_scan('{location}')").fetchone()[0]
    ids = con.execute(f"SELECT DISTINCT trace_id FROM iceberg_scan('{location}') ORDER BY 1").fetchall()
    out["duckdb_rows"] = rows
    out["duckdb_trace_ids"] = [r[0] for r in ids]
    if has_sample_rate:
        total, nulls = con.execute(
            f"SELECT coalesce(sum(sample_rate), 0), count(*) FILTER (WHERE sample_rate IS NULL) "
            f"FROM iceberg_scan('{location}')"
        ).fetchone()
        out["duckdb_sample_rate_sum"] = total
        out["duckdb_sample_rate_nulls"] = nulls

print(json.dumps(out))
