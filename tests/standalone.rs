//! The repository stands on its own: nothing in it points at a document a person who clones
//! it does not have. The design is `docs/ARCHITECTURE.md` and the Direct Line facts are
//! `docs/PROTOCOL.md`, cited as `ARCHITECTURE §N` and `PROTOCOL §N`; `.ci/standalone-refs.py`
//! rewrites the old forms of those references.

use std::path::{Path, PathBuf};

/// What the clone must contain: every tree a reader or the build looks at.
const SCANNED: &[&str] = &[
    "src",
    "tests",
    "emulator",
    "docs",
    "deploy",
    "benches",
    "fuzz",
    "config",
    ".ci",
    "README.md",
];

/// Generated or downloaded trees, never written by hand.
const SKIPPED_DIRS: &[&str] = &["target", "node_modules", "corpus", "artifacts"];

/// Files that name the forbidden references on purpose: this check and the rewriting script.
const EXEMPT: &[&str] = &["tests/standalone.rs", ".ci/standalone-refs.py"];

/// References to documents that live outside the repository, and what replaces each.
const OUTSIDE: &[(&str, &str)] = &[
    ("DESIGN §", "ARCHITECTURE §"),
    ("DESIGN.md", "docs/ARCHITECTURE.md"),
    ("DESIGN (§", "ARCHITECTURE (§"),
    ("shared DESIGN", "docs/ARCHITECTURE.md"),
    ("spec §", "PROTOCOL §"),
    ("Spec §", "PROTOCOL §"),
    ("directline-spec.md", "docs/PROTOCOL.md"),
    (
        "ENVIRONMENT.md",
        "the document that holds the fact (OPERATIONS.md, DESIGN-NOTES.md, …)",
    ),
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

/// User documents say the thing itself, not which internal issue or work session brought it:
/// "issue 19", "#21", "session 7", "stop 23" mean nothing to a reader. The benchmark and
/// profile histories are dated records and keep theirs; PROTOCOL.md cites public GitHub issues.
#[test]
fn user_documents_carry_no_work_log_references() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let history = ["BENCHMARKS.md", "PROFILE-FINDINGS.md", "PROTOCOL.md"];
    let mut documents = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs"))
        .expect("read docs")
        .flatten()
    {
        let path = entry.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if path.extension().is_some_and(|e| e == "md")
            && !name.is_some_and(|n| history.contains(&n.as_str()))
        {
            documents.push(path);
        }
    }
    let mut found = Vec::new();
    for document in &documents {
        let text = std::fs::read_to_string(document).expect("read document");
        for (number, line) in text.lines().enumerate() {
            if let Some(reference) = work_log_reference(line) {
                found.push(format!(
                    "{}:{}: `{reference}`: {}",
                    document.strip_prefix(root).unwrap_or(document).display(),
                    number + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        found.is_empty(),
        "internal issue or session numbers in user documents:\n{}",
        found.join("\n")
    );
}

/// The first "issue 19", "issues 4", "session 7", "stop 23" (any case, `#` allowed before
/// the number) or bare "#21" (not a public `Repo#21`) in `line`.
fn work_log_reference(line: &str) -> Option<String> {
    let lower = line.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    for word in ["issue ", "issues ", "session ", "stop "] {
        for (at, _) in lower.match_indices(word) {
            let starts_word = at == 0 || !bytes[at - 1].is_ascii_alphanumeric();
            let mut next = at + word.len();
            if bytes.get(next) == Some(&b'#') {
                next += 1;
            }
            if starts_word && bytes.get(next).is_some_and(u8::is_ascii_digit) {
                return Some(lower[at..digits_end(bytes, next)].to_owned());
            }
        }
    }
    for (at, _) in lower.match_indices('#') {
        let bare = at == 0 || !bytes[at - 1].is_ascii_alphanumeric();
        if bare && bytes.get(at + 1).is_some_and(u8::is_ascii_digit) {
            return Some(lower[at..digits_end(bytes, at + 1)].to_owned());
        }
    }
    None
}

/// The end of the run of ASCII digits starting at `from`.
fn digits_end(bytes: &[u8], from: usize) -> usize {
    from + bytes[from..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count()
}

#[test]
fn work_log_references_are_recognised() {
    for line in [
        "see issue 19",
        "Issue #7 said",
        "(#21)",
        "Session 7:",
        "stop 23 landed",
    ] {
        assert!(work_log_reference(line).is_some(), "{line}");
    }
    for line in [
        "WebChat#946",
        "tissue 3",
        "the session 's",
        "#tracing-cost",
        "issues with 3",
    ] {
        assert!(work_log_reference(line).is_none(), "{line}");
    }
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
    for sub in (1..=10)
        .map(|n| format!("0.{n}"))
        .chain((1..=10).map(|n| format!("10.{n}")))
    {
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
