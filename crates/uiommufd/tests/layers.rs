//! The engine's layers, checked from its sources (README, "Architecture").
//!
//! The graph: one node per top-level module of `src/` (a file `x.rs` or a
//! folder `x/`), an edge `a -> b` when code of `a` names `crate::b` (a
//! `use crate::…` line, a `crate::b::…` path, or a group
//! `use crate::{b, …}`; `crate::Error` and the other root re-exports count
//! as the module they come from). Comments and `#[cfg(test)]` code do not
//! count: a unit test may drive a lower layer with anything (the mock
//! driver, say).
//!
//! The rules: each module sits in one row of [`LAYERS`] and imports only
//! modules of its own row or the rows below; the graph has no cycle. The
//! edges that break the first rule today are listed in [`EXCEPTIONS`], each
//! with why; an exception that no longer exists fails the test, so the list
//! can only shrink.
//!
//! `UIOMMUFD_LAYERS_PRINT=1` prints the edges.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The rows, bottom first. Keep in step with README's diagram.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "base",
        &[
            "error",
            "logging",
            "faultsafe",
            "inject",
            "drain",
            "test_rng",
        ],
    ),
    ("host", &["user", "accounting", "mmap", "process"]),
    ("clients", &["client"]),
    ("uAPI layouts", &["uapi"]),
    ("driver API", &["domain"]),
    ("drivers", &["vtd"]),
    ("engine files", &["files"]),
    ("pinned memory", &["pages"]),
    ("IO page table", &["io_pagetable"]),
    ("object table", &["context"]),
    ("command context", &["ucmd"]),
    ("objects", &["ioas", "vfio_compat"]),
    ("objects", &["access", "fault", "fail_nth"]),
    ("objects", &["hwpt"]),
    ("objects", &["device"]),
    ("objects", &["viommu"]),
    ("objects", &["veventq"]),
    ("selftest", &["mock"]),
    ("ioctl table", &["dispatch"]),
    ("VFIO devices", &["vfio"]),
    ("device models", &["devices"]),
];

/// Edges that go up a row today, with the reason. Only ever remove lines.
const EXCEPTIONS: &[(&str, &str, &str)] = &[
    // The object kinds register through `context::Object` in their own
    // modules; the context still offers IOAS conveniences (`alloc_ioas`,
    // the VFIO container's compat IOAS) for the Rust API.
    ("context", "ioas", "IOAS convenience calls"),
    // DeviceDriver::viommu_init returns the driver half of a vIOMMU
    // (viommu::ViommuOps), whose methods take core objects (Viommu,
    // Device, HwQueue): moving it down needs narrow views of those.
    ("domain", "viommu", "ViommuOps"),
    // EngineFile::ioctl gets an FdResolver, which answers an fd's Context
    // (the kernel's iommufd_ctx_from_file).
    ("files", "context", "FdResolver::context"),
    // Objects that hold each other: an IOAS lists its automatic-domain
    // HWPTs, the HWPT_ALLOC handler and the nested attach check look up
    // devices, a nested HWPT may sit on a vIOMMU, a vIOMMU delivers to its
    // vEVENT queues.
    ("ioas", "hwpt", "Ioas::hwpts"),
    ("hwpt", "device", "get_device, nested attach"),
    ("hwpt", "viommu", "nested HWPT on a vIOMMU"),
    ("viommu", "veventq", "Viommu::veventqs"),
    // The device registry makes the models it is declared with
    // (devices::create); the models are VFIO PCI functions.
    ("vfio", "devices", "devices::create"),
];

/// Root re-exports and macros, by the module that defines them.
const ROOT_NAMES: &[(&str, &str)] = &[
    ("Errno", "error"),
    ("Error", "error"),
    ("Result", "error"),
    ("bail", "error"),
    ("err", "error"),
    ("Context", "context"),
    ("ObjId", "context"),
    ("Prot", "domain"),
    ("custody", "pages"),
    ("dmabuf", "pages"),
    ("UapiLevel", "uapi"),
];

/// Remove comments, string and char literals (keeping line structure
/// irrelevant: the result is only scanned for paths and braces).
fn strip(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == b'r'
            && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#'))
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
        {
            // raw string r"…" / r#"…"#
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push(c as char);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == b'"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&b'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == b'\'' {
            // a char literal ('x', '\n', '\u{..}', '\''), else a lifetime
            let end = if b.get(i + 1) == Some(&b'\\') {
                (i + 3..b.len().min(i + 12)).find(|&j| b[j] == b'\'')
            } else {
                let ch = src[i + 1..].chars().next().map_or(1, char::len_utf8);
                (b.get(i + 1 + ch) == Some(&b'\'')).then_some(i + 1 + ch)
            };
            match end {
                Some(e) => {
                    out.push_str("' '");
                    i = e + 1;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            let ch = src[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

fn ident_at(b: &[u8], i: usize) -> &str {
    let mut j = i;
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
        j += 1;
    }
    std::str::from_utf8(&b[i..j]).unwrap()
}

/// Index just past the brace that closes the one at `open`.
fn close_brace(b: &[u8], open: usize) -> usize {
    let mut depth = 0;
    for (j, &c) in b.iter().enumerate().skip(open) {
        match c {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
    }
    b.len()
}

/// `src` (stripped) without its `#[cfg(test)]` items; the names of the
/// `#[cfg(test)] mod x;` files it declares are added to `test_mods`.
fn without_tests(src: &str, test_mods: &mut Vec<String>) -> String {
    const ATTR: &str = "#[cfg(test)]";
    let b = src.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while let Some(k) = src[i..].find(ATTR) {
        let at = i + k;
        out.push_str(&src[i..at]);
        let mut j = skip_ws(b, at + ATTR.len());
        // further attributes of the same item
        while b.get(j) == Some(&b'#') {
            j = src[j..].find(']').map_or(b.len(), |e| j + e + 1);
            j = skip_ws(b, j);
        }
        let semi = src[j..].find(';').map(|e| j + e);
        let brace = src[j..].find('{').map(|e| j + e);
        i = match (semi, brace) {
            (Some(s), o) if o.is_none_or(|o| s < o) => {
                let head = src[j..s].split_whitespace().collect::<Vec<_>>();
                if let [.., "mod", name] = head.as_slice() {
                    test_mods.push(name.to_string());
                }
                s + 1
            }
            (_, Some(o)) => close_brace(b, o),
            _ => b.len(),
        };
    }
    out.push_str(&src[i..]);
    out
}

/// The top-level names `crate::` paths in `src` start with.
fn crate_refs(src: &str) -> Vec<String> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(k) = src[from..].find("crate::") {
        let at = from + k;
        from = at + 7;
        if at > 0 && (b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_' || b[at - 1] == b'$') {
            continue;
        }
        let i = skip_ws(b, at + 7);
        if b.get(i) == Some(&b'{') {
            let end = close_brace(b, i);
            let mut depth = 0;
            let mut item_start = true;
            for j in i + 1..end - 1 {
                match b[j] {
                    b'{' => depth += 1,
                    b'}' => depth -= 1,
                    b',' if depth == 0 => item_start = true,
                    c if item_start && depth == 0 && (c.is_ascii_alphabetic() || c == b'_') => {
                        out.push(ident_at(b, j).to_string());
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let id = ident_at(b, i);
            if !id.is_empty() {
                out.push(id.to_string());
            }
        }
    }
    out
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Edges `a -> b`, each with the files that make it.
type Edges = BTreeMap<(String, String), BTreeSet<String>>;

/// The edges `a -> b` with the files that make each.
fn graph(src: &Path) -> (BTreeSet<String>, Edges) {
    let mut files = Vec::new();
    rs_files(src, &mut files);
    files.sort();
    let top = |p: &Path| -> String {
        let rel = p.strip_prefix(src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap();
        first.trim_end_matches(".rs").to_string()
    };
    let modules: BTreeSet<String> = files
        .iter()
        .map(|p| top(p))
        .filter(|m| m != "lib")
        .collect();
    // pass 1: strip, and collect the test-only files
    let mut stripped = BTreeMap::new();
    let mut test_files = BTreeSet::new();
    for p in &files {
        let mut test_mods = Vec::new();
        let text = without_tests(&strip(&std::fs::read_to_string(p).unwrap()), &mut test_mods);
        // where the files of its `mod x;` items live
        let dir = if p.file_name().unwrap() == "mod.rs" || p.file_name().unwrap() == "lib.rs" {
            p.parent().unwrap().to_path_buf()
        } else {
            p.with_extension("")
        };
        for m in test_mods {
            test_files.insert(dir.join(format!("{m}.rs")));
            test_files.insert(dir.join(&m).join("mod.rs"));
        }
        stripped.insert(p.clone(), text);
    }
    let mut edges = Edges::new();
    for (p, text) in &stripped {
        let from = top(p);
        if from == "lib" || test_files.contains(p) {
            continue;
        }
        for r in crate_refs(text) {
            let to = if modules.contains(&r) {
                r.clone()
            } else if let Some((_, m)) = ROOT_NAMES.iter().find(|(n, _)| *n == r) {
                m.to_string()
            } else {
                panic!(
                    "{}: `crate::{r}` is neither a module nor in ROOT_NAMES",
                    p.display()
                );
            };
            if to != from {
                let rel = p.strip_prefix(src).unwrap().display().to_string();
                edges.entry((from.clone(), to)).or_default().insert(rel);
            }
        }
    }
    (modules, edges)
}

/// The strongly connected components of `edges` with more than one
/// module (Tarjan), each as its edges.
fn cycles(edges: &BTreeSet<(String, String)>) -> Vec<Vec<(String, String)>> {
    struct T<'a> {
        next: BTreeMap<&'a str, Vec<&'a str>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        comps: Vec<BTreeSet<&'a str>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.next.get(v).cloned().unwrap_or_default() {
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = BTreeSet::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.insert(w);
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                t.comps.push(comp);
            }
        }
    }
    let mut t = T {
        next: BTreeMap::new(),
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        comps: Vec::new(),
    };
    for (a, b) in edges {
        t.next.entry(a.as_str()).or_default().push(b.as_str());
    }
    let nodes: Vec<&str> = t.next.keys().copied().collect();
    for v in nodes {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.comps
        .iter()
        .map(|c| {
            edges
                .iter()
                .filter(|(a, b)| c.contains(a.as_str()) && c.contains(b.as_str()))
                .cloned()
                .collect()
        })
        .collect()
}

#[test]
fn modules_form_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (modules, edges) = graph(&src);
    let row = |m: &str| LAYERS.iter().position(|(_, ms)| ms.contains(&m));
    if std::env::var("UIOMMUFD_LAYERS_PRINT").is_ok_and(|v| v == "1") {
        for ((a, b), files) in &edges {
            let up = row(a) < row(b);
            println!("{a} -> {b}{} {files:?}", if up { "  UP" } else { "" });
        }
    }
    let mut problems = Vec::new();
    for m in &modules {
        if row(m).is_none() {
            problems.push(format!("module `{m}` is in no row of LAYERS: place it"));
        }
    }
    for (_, ms) in LAYERS {
        for m in *ms {
            if !modules.contains(*m) {
                problems.push(format!("LAYERS names `{m}`, which is not a module"));
            }
        }
    }
    let excepted: BTreeSet<(String, String)> = EXCEPTIONS
        .iter()
        .map(|(a, b, _)| (a.to_string(), b.to_string()))
        .collect();
    for (a, b, _) in EXCEPTIONS {
        let key = (a.to_string(), b.to_string());
        if !edges.contains_key(&key) {
            problems.push(format!(
                "exception {a} -> {b} no longer exists: remove it from EXCEPTIONS"
            ));
        } else if row(a) >= row(b) {
            problems.push(format!(
                "exception {a} -> {b} does not go up a row: remove it from EXCEPTIONS"
            ));
        }
    }
    for ((a, b), files) in &edges {
        if row(a) < row(b) && !excepted.contains(&(a.clone(), b.clone())) {
            problems.push(format!(
                "{a} imports {b}, a higher layer ({})",
                files.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    let kept: BTreeSet<(String, String)> = edges
        .keys()
        .filter(|e| !excepted.contains(*e))
        .cloned()
        .collect();
    for c in cycles(&kept) {
        let edges: Vec<String> = c.iter().map(|(a, b)| format!("{a} -> {b}")).collect();
        problems.push(format!("import cycle among: {}", edges.join(", ")));
    }
    assert!(
        problems.is_empty(),
        "the module layers are broken:\n  {}",
        problems.join("\n  ")
    );
}

/// README's diagram: its rows top first, each the modules from the
/// 18th column on (up to the first word that is not a module), and its
/// text (where the exceptions are marked `a -> b*`).
fn readme_diagram(modules: &BTreeSet<String>) -> (Vec<Vec<String>>, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let readme = std::fs::read_to_string(path).unwrap();
    let at = readme
        .find("## Architecture")
        .expect("README has an Architecture section");
    let body = &readme[at..];
    let start = body.find("```text\n").expect("with a text block") + 8;
    let block = &body[start..start + body[start..].find("```").unwrap()];
    let mut rows = Vec::new();
    for line in block.lines() {
        let row: Vec<String> = line
            .get(17..)
            .unwrap_or("")
            .split_whitespace()
            .take_while(|w| modules.contains(*w))
            .map(str::to_string)
            .collect();
        if !row.is_empty() {
            rows.push(row);
        }
    }
    (rows, block.to_string())
}

#[test]
fn readme_shows_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (modules, _) = graph(&src);
    let (rows, text) = readme_diagram(&modules);
    let want: Vec<Vec<String>> = LAYERS
        .iter()
        .rev()
        .map(|(_, ms)| ms.iter().rev().map(|m| m.to_string()).collect())
        .collect();
    let norm = |v: &[Vec<String>]| -> Vec<BTreeSet<String>> {
        v.iter().map(|r| r.iter().cloned().collect()).collect()
    };
    assert_eq!(
        norm(&rows),
        norm(&want),
        "README's diagram and LAYERS differ"
    );
    for (a, b, _) in EXCEPTIONS {
        let shown = text.contains(&format!("{a} -> {b}*"))
            || (*a == "context" && text.contains("context -> every object kind*"));
        assert!(
            shown,
            "README's diagram does not mark the exception {a} -> {b}*"
        );
    }
}

#[test]
fn the_parser_sees_groups_tests_and_literals() {
    let src = r#"
use crate::{a::X, b, c::{d, e}};
use crate::f::G; // crate::commented
fn x() { let s = "crate::in_string"; let c = '{'; crate::h::go(); }
#[cfg(test)]
mod tests { use crate::mock; }
#[cfg(test)]
mod more;
"#;
    let mut test_mods = Vec::new();
    let text = without_tests(&strip(src), &mut test_mods);
    assert_eq!(crate_refs(&text), ["a", "b", "c", "f", "h"]);
    assert_eq!(test_mods, ["more"]);
}
