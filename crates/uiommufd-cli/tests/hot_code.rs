//! `hot-code.ld` (linked in by `build.rs`) still does its job: every
//! pattern in it names at least one function of the command, and each
//! function it names sits in the block it makes at the start of the text.
//! A pattern that names nothing (a function renamed, or inlined by a newer
//! compiler) fails here: run `scripts/hot-code.py` again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

/// `*` matches any run of characters; everything else itself.
fn glob(p: &str, s: &str) -> bool {
    match p.split_once('*') {
        None => p == s,
        Some((head, rest)) => {
            let Some(tail) = s.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len()).any(|i| tail.is_char_boundary(i) && glob(rest, &tail[i..]))
        }
    }
}

#[test]
fn glob_matches_like_the_linker() {
    assert!(glob("a*c", "abbc"));
    assert!(glob("a*", "a"));
    assert!(glob("*$GT$x*", "_ZN$GT$x17h0E"));
    assert!(!glob("a*c", "abd"));
    assert!(!glob("ab", "abc"));
}

#[test]
fn the_hot_functions_are_laid_out_together() {
    let script = include_str!("../hot-code.ld");
    let patterns: Vec<&str> = script
        .lines()
        .filter_map(|l| l.trim().strip_prefix("*(.text."))
        .filter_map(|l| l.strip_suffix(')'))
        .collect();
    assert!(
        patterns.len() >= 20,
        "hot-code.ld holds {} patterns",
        patterns.len()
    );
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_uiommufd"));
    let out = Command::new("objdump")
        .arg("-t")
        .arg(&bin)
        .output()
        .expect("objdump (binutils) runs");
    assert!(out.status.success(), "objdump -t failed");
    // name -> section, for the functions of the symbol table
    let mut section: BTreeMap<String, String> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // `address flags section<TAB>size [.hidden] name`; the flags hold
        // `F` for a function
        let Some((left, right)) = line.split_once('\t') else {
            continue;
        };
        let (Some(sec), Some(name)) = (
            left.split_whitespace().last(),
            right.split_whitespace().last(),
        ) else {
            continue;
        };
        if left.contains(" F ") {
            section.insert(name.to_string(), sec.to_string());
        }
    }
    assert!(
        section.values().any(|s| s == ".text.hot_path"),
        "no function in .text.hot_path: is hot-code.ld linked in?"
    );
    let mut unmatched = Vec::new();
    for p in &patterns {
        let hits: Vec<(&String, &String)> = section.iter().filter(|(n, _)| glob(p, n)).collect();
        if hits.is_empty() {
            unmatched.push(*p);
        }
        for (n, s) in hits {
            assert_eq!(s, ".text.hot_path", "{n} (pattern {p}) is in {s}");
        }
    }
    assert!(
        unmatched.is_empty(),
        "patterns of hot-code.ld that name no function (run scripts/hot-code.py): {unmatched:#?}"
    );
}
