"""A real S3 client (boto3) for the object-store tests.

  s3_tool.py --endpoint URL create-bucket NAME
  s3_tool.py --endpoint URL list NAME [PREFIX]   -> JSON list of {key, size}
  s3_tool.py --endpoint URL put NAME KEY          -> writes a small object at KEY
"""
import argparse
import json

import boto3
from botocore.config import Config

parser = argparse.ArgumentParser()
parser.add_argument("--endpoint", required=True)
parser.add_argument("--access-key-id", default="test")
parser.add_argument("--secret-access-key", default="test")
parser.add_argument("--region", default="us-east-1")
parser.add_argument("command", choices=["create-bucket", "list", "put"])
parser.add_argument("bucket")
parser.add_argument("prefix", nargs="?", default="")
args = parser.parse_args()

s3 = boto3.client(
    "s3",
    endpoint_url=args.endpoint,
    aws_access_key_id=args.access_key_id,
    aws_secret_access_key=args.secret_access_key,
    region_name=args.region,
    config=Config(s3={"addressing_style": "path"}),
)
if args.command == "create-bucket":
    s3.create_bucket(Bucket=args.bucket)
    print(json.dumps({"created": args.bucket}))
elif args.command == "put":
    s3.put_object(Bucket=args.bucket, Key=args.prefix, Body=b"not referenced by any snapshot")
    print(json.dumps({"put": args.prefix}))
else:
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=args.bucket, Prefix=args.prefix):
        keys.extend({"key": o["Key"], "size": o["Size"]} for o in page.get("Contents", []))
    print(json.dumps(keys))
