"""Checks the deployment files against each other and against the Compose spec.

- docker-compose.yml validates against the Compose Specification schema (the
  copy that check-jsonschema ships);
- every `depends_on` names a service, and every condition fits that service
  (`service_healthy` needs a healthcheck);
- every Prometheus scrape target is a compose service on a port it listens on;
- Grafana's provisioned datasource and dashboards point at mounted paths.

Prints one JSON object: the selector's `TSS__` environment with `${VAR:-default}`
resolved to its default, and the metric names the dashboard uses. Exits 1 with
the list of problems otherwise.
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

root = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
problems = []

schema = subprocess.run(
    [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
     str(root / "docker-compose.yml")],
    capture_output=True, text=True,
)
if schema.returncode != 0:
    problems.append("docker-compose.yml does not validate:\n" + schema.stdout + schema.stderr)

compose = yaml.safe_load((root / "docker-compose.yml").read_text())
services = compose.get("services", {})
volumes = set((compose.get("volumes") or {}).keys())


def resolve(value):
    """`${VAR:-default}` and `${VAR-default}` become the default; `$$` becomes `$`."""
    value = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", str(value))
    if re.search(r"\$\{", value):
        problems.append(f"variable without a default: {value}")
    return value.replace("$$", "$")


def env_of(svc):
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    return {k: resolve(v) for k, v in env.items()}


for name, svc in services.items():
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):
        deps = {d: {"condition": "service_started"} for d in deps}
    for dep, spec in deps.items():
        if dep not in services:
            problems.append(f"{name} depends on unknown service {dep}")
            continue
        cond = (spec or {}).get("condition", "service_started")
        if cond == "service_healthy" and "healthcheck" not in services[dep] and dep != "selector":
            problems.append(f"{name} waits for {dep} to be healthy, but {dep} has no healthcheck")
        if cond == "service_completed_successfully" and services[dep].get("restart") not in (None, "no"):
            problems.append(f"{name} waits for {dep} to complete, but {dep} restarts")
    for mount in svc.get("volumes") or []:
        source = mount.split(":")[0] if isinstance(mount, str) else mount.get("source", "")
        if source.startswith("./"):
            if not (root / source).exists():
                problems.append(f"{name} mounts missing path {source}")
        elif source and source not in volumes:
            problems.append(f"{name} mounts undeclared volume {source}")
    if "image" in svc and not svc.get("build"):
        tag = svc["image"].rsplit("/", 1)[-1]
        if ":" not in tag or tag.endswith(":latest"):
            if svc["image"] != services.get("selector", {}).get("image"):
                problems.append(f"{name} uses an unpinned image {svc['image']}")


def listen_ports(name):
    """Container ports a service listens on, from its published ports and known defaults."""
    ports = set()
    for p in services[name].get("ports") or []:
        ports.add(int(str(p).split(":")[-1].split("/")[0]))
    for k, v in env_of(services[name]).items():
        if k.endswith("_ADDR"):
            ports.add(int(v.rsplit(":", 1)[1]))
    if name == "prometheus":
        ports.add(9090)
    return ports


prometheus = yaml.safe_load((root / "prometheus.yml").read_text())
targets = []
for job in prometheus.get("scrape_configs", []):
    for sc in job.get("static_configs", []):
        targets.extend(sc.get("targets", []))
if not targets:
    problems.append("prometheus.yml has no scrape targets")
for t in targets:
    host, port = t.rsplit(":", 1)
    if host not in services:
        problems.append(f"prometheus target {t}: no service {host} in docker-compose.yml")
    elif int(port) not in listen_ports(host):
        problems.append(f"prometheus target {t}: {host} does not listen on {port}")

grafana = services.get("grafana", {})
mounts = {m.split(":")[1]: m.split(":")[0] for m in grafana.get("volumes", []) if m.startswith("./")}
provisioning = root / mounts.get("/etc/grafana/provisioning", "missing")
dashboards_dir = None
for f in sorted((provisioning / "dashboards").glob("*.yml")):
    for p in yaml.safe_load(f.read_text()).get("providers", []):
        path = p["options"]["path"]
        if path not in mounts:
            problems.append(f"grafana dashboards path {path} is not mounted")
        else:
            dashboards_dir = root / mounts[path]
grafana_env = env_of(services.get("grafana", {}))
selector_env_all = env_of(services.get("selector", {}))
jaeger_sources = []
jaeger_uids = set()
for f in sorted((provisioning / "datasources").glob("*.yml")):
    for ds in yaml.safe_load(f.read_text()).get("datasources", []):
        host = re.sub(r"^https?://", "", ds["url"]).split(":")[0]
        if host not in services:
            problems.append(f"grafana datasource {ds['url']}: no service {host}")
        if ds.get("type") != "jaeger":
            continue
        # Grafana's Jaeger data source: the selector's admin port, with the
        # selector's admin token as the Authorization header, expanded from
        # Grafana's environment as Grafana's provisioning expands ${VAR}.
        jaeger_sources.append(ds["name"])
        jaeger_uids.add(ds.get("uid"))
        admin_port = selector_env_all.get("TSS__SERVER__ADMIN_ADDR", ":8080").rsplit(":", 1)[-1]
        if host != "selector" or not ds["url"].endswith(":" + admin_port):
            problems.append(f"jaeger datasource {ds['url']} is not the selector's admin port {admin_port}")
        json_data, secure = ds.get("jsonData") or {}, ds.get("secureJsonData") or {}
        header = json_data.get("httpHeaderName1")
        value = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: grafana_env.get(m.group(1), ""),
                       str(secure.get("httpHeaderValue1", "")))
        token = selector_env_all.get("TSS__ADMIN__AUTH_TOKEN")
        if token and (header != "Authorization" or value != f"Bearer {token}"):
            problems.append(f"jaeger datasource sends {header}: {value!r}, the selector wants Bearer {token}")
metric_names = set()
# Data links from a series to Explore on the kept traces: the Jaeger
# queries they open, and the series labels they fill in.
trace_links = []


def check_links(panel):
    """The panel's internal data links: to a provisioned Jaeger data source,
    filling in only labels its queries group by."""
    grouped = set()
    for target in panel.get("targets", []):
        for by in re.findall(r"by \(([^)]*)\)", target.get("expr", "")):
            grouped.update(label.strip() for label in by.split(","))
    for link in panel.get("fieldConfig", {}).get("defaults", {}).get("links", []):
        internal = link.get("internal")
        if not internal:
            continue
        if internal.get("datasourceUid") not in jaeger_uids:
            problems.append(f"panel {panel['title']!r}: link to {internal.get('datasourceUid')!r}, not a Jaeger data source")
        text = json.dumps(internal.get("query", {})) + link.get("title", "")
        labels = set(re.findall(r"\$\{__field\.labels\.([A-Za-z_]+)\}", text))
        if not labels <= grouped:
            problems.append(f"panel {panel['title']!r}: link uses labels {sorted(labels - grouped)} its series do not have")
        trace_links.append({"panel": panel["title"], "title": link.get("title"), "query": internal.get("query", {})})


if dashboards_dir is None or not list(dashboards_dir.glob("*.json")):
    problems.append("no provisioned Grafana dashboard")
else:
    for f in dashboards_dir.glob("*.json"):
        for panel in json.loads(f.read_text())["panels"]:
            for target in panel.get("targets", []):
                metric_names.update(re.findall(r"tail_sampling_[a-z_]+", target["expr"]))
            check_links(panel)

selector_env = {k: v for k, v in env_of(services.get("selector", {})).items() if k.startswith("TSS__")}
if not selector_env:
    problems.append("the selector service sets no TSS__ variables")

if problems:
    print("\n".join(problems), file=sys.stderr)
    sys.exit(1)
print(json.dumps({
    "services": sorted(services),
    "selector_env": selector_env,
    "dashboard_metrics": sorted(metric_names),
    "prometheus_targets": targets,
    "jaeger_datasources": jaeger_sources,
    "trace_links": trace_links,
}))
