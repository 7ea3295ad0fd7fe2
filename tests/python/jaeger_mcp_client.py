"""Drive jaeger-mcp (PyPI), a Jaeger client no one here wrote, against the
selector's Jaeger query API, and print what its tools answered as JSON.

jaeger-mcp is an MCP server: it is started over stdio by the MCP client
library, as an agent starts it, and reads JAEGER_URL and JAEGER_TOKEN.

Usage: jaeger_mcp_client.py URL TOKEN SERVICE CHILD_SERVICE TRACE_ID
"""

import asyncio
import json
import os
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


async def call(session, tool, arguments):
    result = await session.call_tool(tool, arguments)
    if result.isError:
        text = " ".join(getattr(c, "text", "") for c in result.content)
        raise SystemExit(f"{tool} failed: {text}")
    return result.structuredContent


async def main(url, token, service, child, trace_id):
    server = os.path.join(os.path.dirname(sys.executable), "jaeger-mcp")
    env = dict(os.environ)
    env.update(
        {
            "JAEGER_URL": url,
            "JAEGER_TOKEN": token,
            "JAEGER_RETRY_ATTEMPTS": "0",
            "JAEGER_CACHE_TTL": "0",
        }
    )
    params = StdioServerParameters(command=server, args=[], env=env)
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            answers = {
                "services": await call(session, "jaeger_list_services", {}),
                "operations": await call(
                    session, "jaeger_list_operations", {"service": child}
                ),
                "search": await call(
                    session,
                    "jaeger_search_traces",
                    {"service": service, "limit": 50},
                ),
                # By duration, in Go duration strings. (A `tags` filter cannot
                # pass through MCP: its server library parses a JSON string
                # argument into an object, which the tool then refuses.)
                "durations": await call(
                    session,
                    "jaeger_search_traces",
                    {
                        "service": child,
                        "min_duration": "1us",
                        "max_duration": "1h",
                        "limit": 50,
                    },
                ),
                "trace": await call(
                    session, "jaeger_get_trace", {"trace_id": trace_id}
                ),
                "dependencies": await call(
                    session, "jaeger_get_dependencies", {"lookback_hours": 1}
                ),
            }
    print(json.dumps(answers))


if __name__ == "__main__":
    if len(sys.argv) != 6:
        raise SystemExit(__doc__)
    asyncio.run(main(*sys.argv[1:]))
