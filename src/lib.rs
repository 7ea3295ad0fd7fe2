//! tail-sampling-selector: reads OTLP traces from Kafka, keeps the traces worth
//! keeping, and stores them in an Apache Iceberg table served over SQL.
//!
//! The stages, in data-flow order: [`ingest`] reads Kafka, [`decide`] groups
//! spans into traces and decides them (with force rules from [`rules`]),
//! [`storage`] writes the kept ones to the table, [`query`] serves SQL
//! over it, and [`maintenance`] keeps the table fast as it ages. Stages import only the shared core — [`model`], [`ack`],
//! [`otlp`], [`matching`], [`table`], [`redis_client`], [`config`],
//! [`metrics`] and [`health`] — never each other. [`api`] and [`app`] sit on top: the HTTP
//! surface and the start-up path that wires the stages together.

// The shared core.
pub mod ack;
pub mod config;
pub mod health;
pub mod kafka_client;
pub mod matching;
pub mod metrics;
pub mod model;
pub mod otlp;
pub mod redis_client;
pub mod supervise;
pub mod table;

// The stages.
pub mod decide;
pub mod forward;
pub mod ingest;
pub mod maintenance;
pub mod publish;
pub mod query;
pub mod rules;
pub mod storage;

// On top: the HTTP surface and the start-up path.
pub mod api;
pub mod app;

/// Test traffic: synthetic traces and the load generator's scenarios. Not
/// part of the service; the tools and the tests enable it.
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;

/// Who may import whom, checked on the source: the core imports only the
/// core; a stage imports the core and itself; the HTTP surface also imports
/// the stages it serves; the start-up path imports everything.
#[cfg(test)]
mod layering {
    use std::collections::BTreeSet;
    use std::path::Path;

    const CORE: &[&str] = &[
        "ack",
        "config",
        "health",
        "kafka_client",
        "matching",
        "metrics",
        "model",
        "otlp",
        "redis_client",
        "supervise",
        "table",
    ];
    const STAGES: &[&str] = &[
        "decide",
        "forward",
        "ingest",
        "maintenance",
        "publish",
        "query",
        "rules",
        "storage",
    ];

    /// The top-level modules a module may name with `crate::`.
    fn allowed(module: &str) -> Option<BTreeSet<&'static str>> {
        let mut ok: BTreeSet<&str> = CORE.iter().copied().collect();
        match module {
            m if CORE.contains(&m) || m == "testkit" => {}
            m if STAGES.contains(&m) => {
                ok.extend(STAGES.iter().copied().filter(|s| *s == m));
            }
            "api" => ok.extend(["api", "decide", "query", "rules"]),
            "app" => return None,
            other => panic!("module `{other}` is in no layer: add it to CORE, STAGES or the edges"),
        }
        // Test code may build traffic with the test kit.
        ok.insert("testkit");
        Some(ok)
    }

    /// Every `crate::name` in the text, with its line.
    fn crate_paths(text: &str) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for (i, _) in code.match_indices("crate::") {
                let preceded_by_ident = code[..i]
                    .chars()
                    .last()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_');
                if preceded_by_ident {
                    continue; // `tail_sampling_selector::` or similar
                }
                let name: String = code[i + 7..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                out.push((n + 1, name));
            }
        }
        out
    }

    fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn no_stage_imports_a_sibling_stage() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let mut violations = Vec::new();
        let mut checked = 0;
        for file in &files {
            let rel = file.strip_prefix(&src).expect("under src");
            let first = rel.components().next().expect("component");
            let module = first
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string();
            if matches!(module.as_str(), "lib" | "main" | "bin") {
                continue;
            }
            let Some(ok) = allowed(&module) else { continue };
            let text = std::fs::read_to_string(file).expect("read file");
            for (line, name) in crate_paths(&text) {
                checked += 1;
                if !ok.contains(name.as_str()) {
                    violations.push(format!(
                        "src/{}:{line}: `{module}` imports `crate::{name}`",
                        rel.display()
                    ));
                }
            }
        }
        assert!(
            checked > 50,
            "found only {checked} crate paths: is the scan broken?"
        );
        assert!(
            violations.is_empty(),
            "layering violations:\n{}",
            violations.join("\n")
        );
    }

    #[test]
    fn the_scan_sees_imports_and_inline_paths() {
        let text = "use crate::ingest::x;\n    let y = crate::storage::f(); // crate::ignored\n use tail_sampling_selector::model;";
        let found: Vec<_> = crate_paths(text).into_iter().map(|(_, n)| n).collect();
        assert_eq!(found, ["ingest", "storage"]);
    }
}
