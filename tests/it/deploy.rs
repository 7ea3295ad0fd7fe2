//! The deployment files agree with the code: the compose file validates
//! against the Compose Specification, its selector environment is a valid
//! configuration, Prometheus scrapes services that exist, the dashboard uses
//! metrics the selector exports, Grafana's Jaeger data source reaches the
//! selector with its token, and `Dockerfile.local` refuses binaries that
//! cannot run in its Linux image.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use tail_sampling_selector::config::Settings;
use tail_sampling_selector::metrics::Metrics;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub(crate) fn check_deploy() -> Value {
    crate::harness::run_python(
        &crate::harness::python_script("check_deploy.py"),
        &[root().display().to_string()],
    )
}

#[test]
fn compose_environment_is_a_valid_configuration() {
    let report = check_deploy();
    let env: Vec<(String, String)> = report["selector_env"]
        .as_object()
        .expect("selector_env")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect();
    assert!(env.len() >= 10, "{env:?}");
    // Unknown keys and bad values are errors in `Settings`, so every variable
    // must name a real key with a value of the right type.
    let settings = Settings::load_with_env(None, env).expect("the compose environment loads");
    assert_eq!(settings.kafka.brokers, "kafka:29092");
    assert_eq!(
        settings.storage.iceberg.catalog_uri.expose(),
        "http://lakekeeper:8181/catalog"
    );
    assert_eq!(settings.storage.iceberg.warehouse, "traces");
    assert!(
        settings.admin.auth_token.is_some(),
        "the admin API must be reachable from the host"
    );
    assert_eq!(settings.server.metrics_addr.port(), 9090);
    let services: Vec<&str> = report["services"]
        .as_array()
        .expect("services")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for needed in [
        "kafka",
        "kafka-init",
        "redis",
        "minio",
        "minio-init",
        "lakekeeper-db",
        "lakekeeper-migrate",
        "lakekeeper",
        "lakekeeper-bootstrap",
        "selector",
        "producer",
        "prometheus",
        "grafana",
    ] {
        assert!(
            services.contains(&needed),
            "missing service {needed}: {services:?}"
        );
    }
}

/// Grafana is provisioned with a Jaeger data source on the selector's admin
/// port that sends the selector's token (`check_deploy.py` fails otherwise).
#[test]
fn grafana_browses_kept_traces_through_the_jaeger_api() {
    let report = check_deploy();
    assert_eq!(
        report["jaeger_datasources"],
        serde_json::json!(["Kept traces"]),
        "{report}"
    );
}

#[test]
fn dashboard_uses_exported_metrics() {
    let report = check_deploy();
    let metrics = Metrics::new().expect("metrics");
    metrics
        .ingest
        .messages_invalid_total
        .with_label_values(&["protobuf"])
        .inc();
    let mut text = metrics.render();
    // The RED series exist once spans were decided; their names are known
    // up front.
    for desc in prometheus::core::Collector::desc(metrics.decide.red.as_ref()) {
        text.push_str(&format!("\n{} 0", desc.fq_name));
    }
    let used = report["dashboard_metrics"]
        .as_array()
        .expect("dashboard_metrics");
    assert!(used.len() >= 8, "{used:?}");
    for name in used.iter().filter_map(Value::as_str) {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "the dashboard queries {name}, which the selector does not export"
        );
    }
}

fn check_binary(path: &Path) -> (bool, String) {
    let out = Command::new("sh")
        .arg(root().join("scripts/check-linux-binary.sh"))
        .arg(path)
        .output()
        .expect("running check-linux-binary.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn dockerfile_local_refuses_non_linux_binaries() {
    let dockerfile =
        std::fs::read_to_string(root().join("Dockerfile.local")).expect("Dockerfile.local");
    assert!(
        dockerfile.contains("check-linux-binary.sh")
            && dockerfile
                .contains("/usr/local/bin/tail-sampling-selector /usr/local/bin/simple_producer"),
        "Dockerfile.local must run the guard on the binaries it copies"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let text = dir.path().join("tail-sampling-selector");
    std::fs::write(&text, "#!/bin/sh\necho not a binary\n").expect("write");
    let (ok, out) = check_binary(&text);
    assert!(!ok && out.contains("not an ELF binary"), "{out}");

    // The first bytes of a 64-bit Mach-O executable, as macOS builds it.
    let macho = dir.path().join("macho");
    std::fs::write(
        &macho,
        [0xcf, 0xfa, 0xed, 0xfe, 0x0c, 0x00, 0x00, 0x01, 0, 0, 0, 0],
    )
    .expect("write");
    let (ok, out) = check_binary(&macho);
    assert!(!ok && out.contains("Mach-O (macOS)"), "{out}");
    assert!(
        out.contains("Dockerfile.local needs a Linux binary"),
        "{out}"
    );

    // A 32-bit ELF is refused too.
    let elf32 = dir.path().join("elf32");
    let mut header = vec![0x7f, b'E', b'L', b'F', 1, 1, 1, 0];
    header.resize(20, 0);
    header[18] = 0x03;
    std::fs::write(&elf32, header).expect("write");
    let (ok, out) = check_binary(&elf32);
    assert!(!ok && out.contains("32-bit"), "{out}");

    // The binary this build produced passes.
    let (ok, out) = check_binary(Path::new(env!("CARGO_BIN_EXE_tail-sampling-selector")));
    assert!(ok, "{out}");
    assert!(
        out.contains("Linux ELF x86_64") || out.contains("Linux ELF aarch64"),
        "{out}"
    );
}
