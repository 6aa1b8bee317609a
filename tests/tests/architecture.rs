//! The library's structure, checked: what ARCHITECTURE.md promises a maintainer.
//!
//! - no two library files import each other, directly or through others (an import
//!   loop makes a module impossible to read, test or move on its own);
//! - exactly one module names `deadpool` (besides `drivers::deadpool`, whose job is
//!   to wrap deadpool's managers), so the rest of the crate talks to one small door;
//! - no domain module reports: only the observation module touches the `metrics`
//!   crate or emits `tracing` events; the domain returns what happened;
//! - every example file teaches one thing in at most about 250 lines.
//!
//! The checks read the source as text: `use` trees and `crate::`/`super::`/`self::`
//! paths outside comments and outside `#[cfg(test)]` modules.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The observation module: the one place that reports.
const OBSERVATION: &str = "observe/";
/// Files that are not domain logic and may log: adapters to other crates and tools.
const NOT_DOMAIN: &[&str] = &[OBSERVATION, "drivers/", "chaos/", "bin/", "lib.rs"];
/// The door to `deadpool::managed`, and the driver that wraps deadpool's managers.
const DEADPOOL_WRAPPER: &str = "drivers/deadpool.rs";
const MAX_EXAMPLE_LINES: usize = 260;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests package sits in the workspace")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("readable source directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The library's files, keyed by their path under `pool/src`, with the code that
/// counts: comments and test modules removed.
fn library() -> BTreeMap<String, String> {
    let src = workspace().join("pool/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n != "tests.rs"))
        .map(|p| {
            let rel = p
                .strip_prefix(&src)
                .expect("under pool/src")
                .to_string_lossy()
                .replace('\\', "/");
            let text = fs::read_to_string(&p).expect("readable source file");
            (rel, code_only(&text))
        })
        .filter(|(rel, _)| !rel.starts_with("bin/"))
        .collect()
}

/// Drops comments (so doc links do not count as imports), the text of string literals
/// (so a message is not read as code), and everything from a `#[cfg(test)]` module on.
fn code_only(text: &str) -> String {
    let stripped = strip_comments_and_strings(text);
    let lines: Vec<&str> = stripped.lines().collect();
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            let next = lines[i + 1..].iter().find(|l| !l.trim().is_empty());
            if next.is_some_and(|l| l.trim_start().starts_with("mod ")) {
                break;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A small lexer: keeps code and line breaks, empties comments and literals.
fn strip_comments_and_strings(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i += 2;
            while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                if chars[i] == '\n' {
                    out.push('\n');
                }
                i += 1;
            }
            i += 2;
        } else if c == 'r' && matches!(next, Some('"' | '#')) && !ident_before(&chars, i) {
            let hashes = chars[i + 1..].iter().take_while(|&&h| h == '#').count();
            if chars.get(i + 1 + hashes) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            i += 2 + hashes;
            let closing: Vec<char> = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            while i < chars.len() && !chars[i..].starts_with(&closing) {
                if chars[i] == '\n' {
                    out.push('\n');
                }
                i += 1;
            }
            i += closing.len();
            out.push_str("\"\"");
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                if chars.get(i) == Some(&'\n') {
                    out.push('\n');
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if let Some(len) = (c == '\'').then(|| char_literal_len(&chars[i..])).flatten() {
            i += len;
            out.push_str("' '");
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_before(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

/// The length of a char literal starting here (`'a'`, `'\''`, `'\u{1F600}'`), or
/// `None` for a lifetime.
fn char_literal_len(chars: &[char]) -> Option<usize> {
    match chars.get(1)? {
        '\\' => chars[3..].iter().position(|&c| c == '\'').map(|p| p + 4),
        _ if chars.get(2) == Some(&'\'') => Some(3),
        _ => None,
    }
}

/// The module path a file defines: `pool/slot.rs` is `pool::slot`, `pool/mod.rs` is
/// `pool`, `lib.rs` is the root.
fn module_of(file: &str) -> Vec<String> {
    let stem = file.trim_end_matches(".rs");
    let mut parts: Vec<String> = stem.split('/').map(str::to_owned).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// Every path a file names: expanded `use` trees, and inline `crate::`, `super::` and
/// `self::` paths. Each is absolute, as module segments (plus possibly an item).
fn paths_in(module: &[String], code: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let flat = code.replace('\n', " ");
    let mut rest = flat.as_str();
    while let Some(at) = find_use(rest) {
        let after = &rest[at..];
        let end = after.find(';').unwrap_or(after.len());
        let tree = after["use ".len()..end]
            .replace(" as ", "@")
            .replace(' ', "");
        expand(&tree, Vec::new(), &mut paths);
        rest = &after[end..];
    }
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(pos) = flat[from..].find(start) {
            let at = from + pos;
            let before = flat[..at].chars().last();
            if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                let path: String = flat[at..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                paths.push(
                    path.split("::")
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect(),
                );
            }
            from = at + start.len();
        }
    }
    paths
        .into_iter()
        .filter_map(|p| absolute(module, p))
        .collect()
}

fn find_use(text: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(pos) = text[from..].find("use ") {
        let at = from + pos;
        let before = text[..at].chars().last();
        if before.is_none_or(|c| !(c.is_alphanumeric() || c == '_')) {
            return Some(at);
        }
        from = at + 4;
    }
    None
}

/// Expands a `use` tree such as `crate::a::{self, b::C, d::{E, F}}`.
fn expand(tree: &str, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    if let Some(open) = tree.find('{') {
        let mut base = prefix;
        base.extend(
            tree[..open]
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        );
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&inner[start..i], base.clone(), out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&inner[start..], base, out);
    } else {
        let mut path = prefix;
        let item = tree.split('@').next().unwrap_or(tree);
        path.extend(
            item.split("::")
                .filter(|s| !s.is_empty() && *s != "self")
                .map(str::to_owned),
        );
        if !path.is_empty() {
            out.push(path);
        }
    }
}

fn absolute(module: &[String], path: Vec<String>) -> Option<Vec<String>> {
    let first = path.first()?.clone();
    let first = first.as_str();
    let mut base: Vec<String> = match first {
        "crate" => Vec::new(),
        "self" => module.to_vec(),
        "super" => module.to_vec(),
        _ => return None,
    };
    let mut segments = path.into_iter().peekable();
    if first == "crate" || first == "self" {
        segments.next();
    }
    while segments.peek().is_some_and(|s| s == "super") {
        segments.next();
        base.pop();
    }
    base.extend(segments);
    Some(base)
}

/// The file that defines the longest module prefix of `path`.
fn target_file(files: &BTreeMap<Vec<String>, String>, path: &[String]) -> Option<String> {
    (0..=path.len())
        .rev()
        .find_map(|n| files.get(&path[..n]).cloned())
}

#[test]
fn the_library_has_no_import_loop() {
    let library = library();
    let modules: BTreeMap<Vec<String>, String> = library
        .keys()
        .map(|file| (module_of(file), file.clone()))
        .collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, code) in &library {
        let module = module_of(file);
        let targets = edges.entry(file.clone()).or_default();
        for path in paths_in(&module, code) {
            if let Some(target) = target_file(&modules, &path).filter(|t| t != file) {
                targets.insert(target);
            }
        }
    }
    let loops: Vec<Vec<String>> = strongly_connected(&edges)
        .into_iter()
        .filter(|c| c.len() > 1)
        .collect();
    let described: Vec<String> = loops
        .iter()
        .map(|files| {
            let inside: BTreeSet<&String> = files.iter().collect();
            let links: Vec<String> = files
                .iter()
                .flat_map(|f| {
                    edges[f]
                        .iter()
                        .filter(|t| inside.contains(t))
                        .map(move |t| format!("{f} -> {t}"))
                })
                .collect();
            format!("{} files: {}", files.len(), links.join(", "))
        })
        .collect();
    assert!(
        loops.is_empty(),
        "import loops in pool/src:\n{}",
        described.join("\n")
    );
}

/// Tarjan's algorithm: the sets of files that reach each other.
fn strongly_connected(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.edges.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            s.out.push(component);
        }
    }
    let mut state = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !state.index.contains_key(v.as_str()) {
            visit(&mut state, v);
        }
    }
    state.out
}

fn names_deadpool(code: &str) -> bool {
    code.match_indices("deadpool::").any(|(at, _)| {
        let before = &code[..at];
        !(before.ends_with("drivers::") || before.ends_with("steadypool_"))
    })
}

#[test]
fn exactly_one_module_names_deadpool() {
    let doors: Vec<String> = library()
        .into_iter()
        .filter(|(file, code)| file != DEADPOOL_WRAPPER && names_deadpool(code))
        .map(|(file, _)| file)
        .collect();
    assert_eq!(doors.len(), 1, "files naming deadpool: {doors:?}");
}

fn reports(code: &str) -> Option<&'static str> {
    let metrics_crate = code.match_indices("metrics::").any(|(at, _)| {
        code[..at]
            .chars()
            .last()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == ':'))
    });
    if metrics_crate {
        return Some("the metrics crate");
    }
    let events = [
        "warn!(", "info!(", "error!(", "debug!(", "trace!(", "event!(",
    ];
    if code.contains("tracing::") && events.iter().any(|m| code.contains(m)) {
        return Some("tracing events");
    }
    None
}

#[test]
fn only_the_observation_module_reports() {
    let reporting: Vec<String> = library()
        .into_iter()
        .filter(|(file, _)| !NOT_DOMAIN.iter().any(|p| file.starts_with(p)))
        .filter_map(|(file, code)| reports(&code).map(|what| format!("{file} uses {what}")))
        .collect();
    assert!(
        reporting.is_empty(),
        "domain modules that report instead of returning what happened:\n{}",
        reporting.join("\n")
    );
}

#[test]
fn retry_is_policy_budget_and_run() {
    let src = workspace().join("pool/src");
    for part in ["retry/policy.rs", "retry/budget.rs", "retry/run.rs"] {
        assert!(src.join(part).is_file(), "pool/src/{part} is missing");
    }
    assert!(
        !src.join("retry.rs").exists(),
        "pool/src/retry.rs is still one file"
    );
}

#[test]
fn every_example_file_is_short() {
    let mut files = Vec::new();
    rust_files(&workspace().join("examples"), &mut files);
    let long: Vec<String> = files
        .iter()
        .filter_map(|p| {
            let lines = fs::read_to_string(p)
                .expect("readable example")
                .lines()
                .count();
            (lines > MAX_EXAMPLE_LINES).then(|| format!("{} ({lines} lines)", p.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "examples over {MAX_EXAMPLE_LINES} lines: {long:?}"
    );
}

#[test]
fn the_path_parser_sees_what_a_reader_sees() {
    let module = module_of("pool/slot.rs");
    assert_eq!(module, ["pool", "slot"]);
    assert_eq!(module_of("pool/mod.rs"), ["pool"]);
    let code = code_only(
        "use crate::a::{self, b::C, d::{E, F as G}};\n\
         // use crate::commented::Out;\n\
         fn f() { super::core::Core::new(\"use crate::in_text; http://x\"); } // crate::trailing\n\
         /* use crate::block::Comment; */ let c = '\"'; let r = r#\"use crate::raw\"#;\n\
         #[cfg(test)]\nmod tests { use crate::test_only::X; }\n",
    );
    let paths: BTreeSet<String> = paths_in(&module, &code)
        .into_iter()
        .map(|p| p.join("::"))
        .collect();
    let expected: BTreeSet<String> = [
        "a",
        "a::b::C",
        "a::d::E",
        "a::d::F",
        "pool::core::Core::new",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(paths, expected);
}
