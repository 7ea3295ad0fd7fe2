//! Who may import whom, checked on the source: the core imports only the
//! core; a stage imports the core and itself; the HTTP surface also imports
//! the stages it serves; the start-up path imports everything. And no
//! module imports, directly or not, a module that imports it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const CORE: &[&str] = &[
    "ack",
    "config",
    "handoff",
    "health",
    "kafka_client",
    "matching",
    "metrics",
    "model",
    "otlp",
    "recovery",
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
    "reread",
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
        if matches!(module.as_str(), "lib" | "main" | "bin" | "layering") {
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

/// The module of each file under `src/` (`query::lookup` for
/// `src/query/lookup.rs`, `query` for `src/query/mod.rs`) with its code:
/// comments and the `tests` module cut off, since tests may import freely.
fn module_code(src: &Path) -> BTreeMap<String, String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut out = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(src).expect("under src");
        let mut parts: Vec<String> = rel
            .components()
            .map(|c| {
                c.as_os_str()
                    .to_string_lossy()
                    .trim_end_matches(".rs")
                    .to_string()
            })
            .collect();
        if matches!(parts[0].as_str(), "lib" | "main" | "bin" | "layering") {
            continue;
        }
        if parts.last().is_some_and(|p| p == "mod") {
            parts.pop();
        }
        let text = std::fs::read_to_string(&file).expect("read file");
        out.insert(parts.join("::"), code_of(&text));
    }
    out
}

/// The text without its `#[cfg(test)] mod tests` and without comments.
fn code_of(text: &str) -> String {
    let tests = regex::Regex::new(r"#\[cfg\(test\)\]\s*mod tests").expect("regex");
    let text = tests.find(text).map_or(text, |m| &text[..m.start()]);
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The longest prefix of `path` that is a module.
fn resolve(modules: &BTreeMap<String, String>, path: &[&str]) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|m| modules.contains_key(m))
}

/// What follows a `crate::` or `super::` at `rest`: one path, or each
/// path of a `{…}` group.
fn paths_after(rest: &str) -> Vec<Vec<&str>> {
    if let Some(group) = rest.strip_prefix('{') {
        let group = group.split('}').next().unwrap_or("");
        return group
            .split(',')
            .map(|p| p.trim().split("::").filter(|s| !s.is_empty()).collect())
            .collect();
    }
    let end = rest
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(rest.len());
    vec![rest[..end].split("::").filter(|s| !s.is_empty()).collect()]
}

fn preceded_by_path_char(code: &str, at: usize) -> bool {
    code[..at]
        .chars()
        .last()
        .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
}

/// The modules each module names: through `crate::`, through `super::`
/// (a path under the parent, or the parent itself), and its own children
/// by name (`lookup::find`, `use lookup`).
fn imports(modules: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut edges = BTreeMap::new();
    for (module, code) in modules {
        let me: Vec<&str> = module.split("::").collect();
        let mut out = BTreeSet::new();
        for (at, _) in code.match_indices("crate::") {
            if preceded_by_path_char(code, at) {
                continue;
            }
            for path in paths_after(&code[at + 7..]) {
                out.extend(resolve(modules, &path));
            }
        }
        for (at, _) in code.match_indices("super::") {
            if preceded_by_path_char(code, at) {
                continue;
            }
            let (up, rest) = match code[at + 7..].strip_prefix("super::") {
                Some(rest) => (2, rest),
                None => (1, &code[at + 7..]),
            };
            let base = &me[..me.len().saturating_sub(up)];
            for path in paths_after(rest) {
                let full: Vec<&str> = base.iter().copied().chain(path).collect();
                out.extend(resolve(modules, &full).or_else(|| Some(base.join("::"))));
            }
        }
        for child in modules.keys() {
            let Some(name) = child
                .strip_prefix(module.as_str())
                .and_then(|c| c.strip_prefix("::"))
                .filter(|c| !c.contains("::"))
            else {
                continue;
            };
            let named = code
                .match_indices(&format!("{name}::"))
                .any(|(at, _)| !preceded_by_path_char(code, at));
            let used =
                code.contains(&format!("use {name}")) || code.contains(&format!("self::{name}"));
            if named || used {
                out.insert(child.clone());
            }
        }
        out.remove(module);
        out.remove("");
        edges.insert(module.clone(), out);
    }
    edges
}

/// The strongly connected groups of more than one module (Tarjan): each is
/// a set of modules that import one another in a circle.
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            for w in self.edges.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    self.low.entry(v).and_modify(|l| *l = (*l).min(lw));
                } else if self.stack.contains(&w) {
                    let iw = self.index[w];
                    self.low.entry(v).and_modify(|l| *l = (*l).min(iw));
                }
            }
            if self.low[v] == self.index[v] {
                let at = self.stack.iter().rposition(|x| *x == v).expect("on stack");
                let group: Vec<String> = self.stack.drain(at..).map(str::to_string).collect();
                if group.len() > 1 {
                    self.found.push(group);
                }
            }
        }
    }
    let mut walk = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.found
}

/// The same imports between top-level modules only.
fn top_level(edges: &BTreeMap<String, BTreeSet<String>>) -> BTreeMap<String, BTreeSet<String>> {
    let top = |m: &str| m.split("::").next().unwrap_or("").to_string();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in edges {
        let entry = out.entry(top(from)).or_default();
        entry.extend(tos.iter().map(|t| top(t)).filter(|t| *t != top(from)));
    }
    out
}

/// No file imports, directly or through others, a file that imports it:
/// what a parent and its children share (an error type, the state) lives
/// in a leaf of its own. Between top-level modules too: the core holds no
/// circle (`config` and `table`, `ack` and `model` used to).
#[test]
fn no_import_goes_round_in_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = module_code(&src);
    let edges = imports(&modules);
    let named: usize = edges.values().map(BTreeSet::len).sum();
    assert!(
        named > 200,
        "found only {named} imports: is the scan broken?"
    );
    let files = cycles(&edges);
    assert!(
        files.is_empty(),
        "modules that import one another: {files:?}"
    );
    let top = cycles(&top_level(&edges));
    assert!(
        top.is_empty(),
        "top-level modules that import one another: {top:?}"
    );
}

#[test]
fn the_cycle_scan_sees_a_parent_and_child_circle_and_a_core_circle() {
    let modules: BTreeMap<String, String> = [
        (
            "query",
            "mod lookup;\npub enum QueryError {}\nfn f() { lookup::find() }",
        ),
        ("query::lookup", "use super::QueryError;\npub fn find() {}"),
        ("query::result", "pub struct QueryResult;"),
        ("query::search", "use super::result::QueryResult;"),
        (
            "config",
            "fn f() -> crate::table::layout::Layout { todo!() }",
        ),
        ("table", "use crate::config::{Settings, IcebergConfig};"),
        ("table::layout", "pub struct Layout;"),
    ]
    .into_iter()
    .map(|(m, c)| (m.to_string(), c.to_string()))
    .collect();
    let edges = imports(&modules);
    let mut files = cycles(&edges);
    files.iter_mut().for_each(|c| c.sort());
    assert_eq!(
        files,
        [vec!["query".to_string(), "query::lookup".to_string()]]
    );
    let mut top = cycles(&top_level(&edges));
    top.iter_mut().for_each(|c| c.sort());
    assert_eq!(top, [vec!["config".to_string(), "table".to_string()]]);
}
