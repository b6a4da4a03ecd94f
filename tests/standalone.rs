//! The repository stands on its own: nothing in it points at a document a person who clones
//! it does not have. The design is `docs/ARCHITECTURE.md` and the Direct Line facts are
//! `docs/PROTOCOL.md`, cited as `ARCHITECTURE §N` and `PROTOCOL §N`; `.ci/standalone-refs.py`
//! rewrites the old forms of those references.

use std::path::{Path, PathBuf};

/// What the clone must contain: every tree a reader or the build looks at.
const SCANNED: &[&str] = &[
    "src", "tests", "emulator", "docs", "deploy", "benches", "fuzz", "config", ".ci", "README.md",
];

/// Generated or downloaded trees, never written by hand.
const SKIPPED_DIRS: &[&str] = &["target", "node_modules", "corpus", "artifacts"];

/// Files that name the forbidden references on purpose: this check and the rewriting script.
const EXEMPT: &[&str] = &["tests/standalone.rs", ".ci/standalone-refs.py"];

/// References to documents that live outside the repository, and what replaces each.
const OUTSIDE: &[(&str, &str)] = &[
    ("DESIGN §", "ARCHITECTURE §"),
    ("DESIGN.md", "docs/ARCHITECTURE.md"),
    ("spec §", "PROTOCOL §"),
    ("Spec §", "PROTOCOL §"),
    ("directline-spec.md", "docs/PROTOCOL.md"),
    ("ENVIRONMENT.md", "the document that holds the fact (OPERATIONS.md, DESIGN-NOTES.md, …)"),
    ("../shared", "a document in docs/"),
    ("/work/shared", "a document in docs/"),
];

#[test]
fn no_reference_points_outside_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for entry in SCANNED {
        collect(&root.join(entry), &mut files);
    }
    assert!(
        files.iter().any(|f| f.ends_with("src/lib.rs")),
        "the scan found no sources under {}",
        root.display()
    );

    let mut found = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(root).unwrap_or(file);
        let relative_text = relative.to_string_lossy().replace('\\', "/");
        if EXEMPT.contains(&relative_text.as_str()) {
            continue;
        }
        // Binary seeds and images are not prose.
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for (number, line) in text.lines().enumerate() {
            for (pattern, instead) in OUTSIDE {
                if line.contains(pattern) {
                    found.push(format!(
                        "{relative_text}:{}: `{pattern}` (use {instead}): {}",
                        number + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "references to documents outside the repository (run .ci/standalone-refs.py):\n{}",
        found.join("\n")
    );
}

/// The documents the references now point at exist and keep their numbering.
#[test]
fn the_cited_documents_have_the_cited_sections() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let architecture = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).expect("read");
    for section in 1..=16 {
        assert!(
            architecture.contains(&format!("\n## {section}. ")),
            "docs/ARCHITECTURE.md has no section {section}"
        );
    }
    let protocol = std::fs::read_to_string(root.join("docs/PROTOCOL.md")).expect("read");
    for section in 0..=13 {
        assert!(
            protocol.contains(&format!("\n## {section}. ")),
            "docs/PROTOCOL.md has no section {section}"
        );
    }
    for sub in (1..=10).map(|n| format!("0.{n}")).chain((1..=10).map(|n| format!("10.{n}"))) {
        assert!(
            protocol.contains(&format!("\n### {sub} ")),
            "docs/PROTOCOL.md has no section {sub}"
        );
    }
}

fn collect(path: &Path, files: &mut Vec<PathBuf>) {
    if path.is_file() {
        files.push(path.to_path_buf());
        return;
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let skipped = path
            .file_name()
            .is_some_and(|name| SKIPPED_DIRS.iter().any(|s| name == *s));
        if path.is_dir() && skipped {
            continue;
        }
        collect(&path, files);
    }
}
