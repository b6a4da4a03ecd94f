//! The layering rule of ARCHITECTURE §9, checked on the source: no two files of a crate import
//! each other, directly or through others, and a gateway file names only modules of its own
//! layer or the layers below it (the map in `src/lib.rs`, [`LAYERS`] here). Every `crate::`, `super::`, `self::` and
//! child-module path in a file (its `use` items and the paths in its code) is an edge to the
//! file that defines the module the path goes through; the graph of files must have no
//! cycle. Unit-test modules (`#[cfg(test)]`) are left out: they sit inside their file.
//! Paths inside macro invocations are not seen (they are token streams to `syn`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// One crate's files by module path (`[]` is the crate root).
struct Crate {
    files: BTreeMap<Vec<String>, PathBuf>,
}

impl Crate {
    fn load(root: &Path) -> Self {
        let mut files = BTreeMap::new();
        collect(root, root, &mut files);
        Self { files }
    }

    /// The file holding the module `path` goes through: its longest prefix that is a file.
    fn file_of(&self, path: &[String]) -> Option<&Vec<String>> {
        (0..=path.len())
            .rev()
            .find_map(|len| self.files.get_key_value(&path[..len]).map(|(k, _)| k))
    }
}

fn collect(root: &Path, dir: &Path, files: &mut BTreeMap<Vec<String>, PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            collect(root, &path, files);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let relative = path.strip_prefix(root).expect("under root");
        let mut module: Vec<String> = relative
            .with_extension("")
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        match module.last().map(String::as_str) {
            // The binary is its own crate and reaches the library by name.
            Some("main") if module.len() == 1 => continue,
            Some("lib") if module.len() == 1 => module.clear(),
            Some("mod") => {
                module.pop();
            }
            _ => {}
        }
        files.insert(module, path);
    }
}

/// The module paths one file's code names.
struct Paths<'a> {
    module: &'a [String],
    children: BTreeSet<String>,
    found: Vec<Vec<String>>,
}

impl Paths<'_> {
    fn resolve(&mut self, segments: Vec<String>) {
        let Some(first) = segments.first() else {
            return;
        };
        let absolute = match first.as_str() {
            "crate" => segments[1..].to_vec(),
            "self" => [self.module, &segments[1..]].concat(),
            "super" => {
                let mut base = self.module.to_vec();
                let mut rest = &segments[..];
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop();
                    rest = &rest[1..];
                }
                [base.as_slice(), rest].concat()
            }
            name if self.children.contains(name) => [self.module, &segments[..]].concat(),
            _ => return,
        };
        self.found.push(absolute);
    }
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        attr.path().is_ident("cfg")
            && attr
                .parse_args::<syn::Meta>()
                .is_ok_and(|meta| meta.path().is_ident("test"))
    })
}

fn use_paths(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match tree {
        syn::UseTree::Path(path) => {
            prefix.push(path.ident.to_string());
            use_paths(&path.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(name) => {
            let mut full = prefix.clone();
            if name.ident != "self" {
                full.push(name.ident.to_string());
            }
            out.push(full);
        }
        syn::UseTree::Rename(rename) => {
            let mut full = prefix.clone();
            if rename.ident != "self" {
                full.push(rename.ident.to_string());
            }
            out.push(full);
        }
        syn::UseTree::Glob(_) => out.push(prefix.clone()),
        syn::UseTree::Group(group) => {
            for tree in &group.items {
                use_paths(tree, prefix, out);
            }
        }
    }
}

impl<'ast> Visit<'ast> for Paths<'_> {
    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        if is_cfg_test(&item.attrs) {
            return;
        }
        syn::visit::visit_item_mod(self, item);
    }

    fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
        if is_cfg_test(&item.attrs) {
            return;
        }
        syn::visit::visit_item_fn(self, item);
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        if is_cfg_test(&item.attrs) {
            return;
        }
        let mut out = Vec::new();
        use_paths(&item.tree, &mut Vec::new(), &mut out);
        for path in out {
            self.resolve(path);
        }
    }

    /// `pub(crate)` and `pub(super)` name who may see an item, not what it uses.
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}

    fn visit_path(&mut self, path: &'ast syn::Path) {
        self.resolve(path.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, path);
    }
}

/// Edges between the crate's files, by module path.
fn edges(krate: &Crate) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut graph = BTreeMap::new();
    for (module, file) in &krate.files {
        let text = std::fs::read_to_string(file).expect("read file");
        let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let children = ast
            .items
            .iter()
            .filter_map(|item| match item {
                syn::Item::Mod(m) if m.content.is_none() && !is_cfg_test(&m.attrs) => {
                    Some(m.ident.to_string())
                }
                _ => None,
            })
            .collect();
        let mut paths = Paths {
            module,
            children,
            found: Vec::new(),
        };
        paths.visit_file(&ast);
        let targets: BTreeSet<Vec<String>> = paths
            .found
            .iter()
            .filter_map(|path| krate.file_of(path))
            .filter(|target| *target != module)
            .cloned()
            .collect();
        graph.insert(module.clone(), targets);
    }
    graph
}

fn name(module: &[String]) -> String {
    if module.is_empty() {
        "lib".into()
    } else {
        module.join("::")
    }
}

/// Every cycle's files, found by depth-first search (one cycle per back edge).
fn cycles(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<String> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        node: &Vec<String>,
        graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        marks: &mut BTreeMap<Vec<String>, Mark>,
        stack: &mut Vec<Vec<String>>,
        found: &mut Vec<String>,
    ) {
        marks.insert(node.clone(), Mark::Open);
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            match marks.get(next).copied().unwrap_or(Mark::New) {
                Mark::New => visit(next, graph, marks, stack, found),
                Mark::Open => {
                    let start = stack.iter().position(|n| n == next).unwrap_or(0);
                    let mut cycle: Vec<String> = stack[start..].iter().map(|m| name(m)).collect();
                    cycle.push(name(next));
                    found.push(cycle.join(" → "));
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks.insert(node.clone(), Mark::Done);
    }
    let mut marks = BTreeMap::new();
    let mut found = Vec::new();
    for node in graph.keys() {
        if marks.get(node).copied().unwrap_or(Mark::New) == Mark::New {
            visit(node, graph, &mut marks, &mut Vec::new(), &mut found);
        }
    }
    found
}

fn assert_acyclic(root: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(root);
    let krate = Crate::load(&root);
    assert!(krate.files.len() > 5, "found the crate's files");
    let found = cycles(&edges(&krate));
    assert!(
        found.is_empty(),
        "import cycles between files of {}:\n  {}",
        root.display(),
        found.join("\n  ")
    );
}

/// The gateway's layers as `src/lib.rs` declares them, top first, by top-level module.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "server",
        &["server", "signals", "h2_idle", "tls", "cli", "logging"],
    ),
    ("pipeline", &["pipeline"]),
    ("routes", &["routes"]),
    ("stream and the app state", &["stream", "gateway"]),
    (
        "upstream and the settings served",
        &["upstream", "policy", "record", "live", "reload"],
    ),
    ("identity", &["identity"]),
    (
        "cores",
        &[
            "config",
            "endpoint",
            "auth",
            "seal",
            "secret",
            "forwarded",
            "ratelimit",
            "refresh_share",
            "rewrite",
            "scrub",
            "cors",
            "activity_body",
            "activity_set",
            "upload_activity",
            "jsonscan",
            "boxed_body",
            "error",
            "metrics",
            "clock",
            "demo",
            "credential",
            "telemetry",
            "workers",
            "admission",
            "request_headers",
        ],
    ),
];

fn layer_of(module: &[String]) -> Option<usize> {
    let top = module.first()?;
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&top.as_str()))
}

#[test]
fn the_gateway_imports_only_down_its_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let krate = Crate::load(&root);
    let graph = edges(&krate);
    let mut unplaced = BTreeSet::new();
    let mut upward = BTreeSet::new();
    for (from, targets) in &graph {
        if from.is_empty() {
            // lib.rs declares every module.
            continue;
        }
        let Some(from_layer) = layer_of(from) else {
            unplaced.insert(from[0].clone());
            continue;
        };
        for to in targets {
            match layer_of(to) {
                Some(to_layer) if to_layer < from_layer => {
                    upward.insert((name(from), name(to)));
                }
                Some(_) => {}
                None if to.is_empty() => {}
                None => {
                    unplaced.insert(to[0].clone());
                }
            }
        }
    }
    assert!(
        unplaced.is_empty(),
        "modules in no layer of LAYERS (add them to src/lib.rs's map and here): {unplaced:?}"
    );
    assert!(
        upward.is_empty(),
        "imports up the layers of src/lib.rs (from → to): {upward:?}"
    );
}

#[test]
fn the_gateway_has_no_import_cycle() {
    assert_acyclic("src");
}

#[test]
fn the_emulator_has_no_import_cycle() {
    assert_acyclic("emulator/src");
}

#[test]
fn the_checker_sees_a_cycle_through_a_third_file() {
    let dir = std::env::temp_dir().join(format!("layers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("b")).unwrap();
    std::fs::write(dir.join("lib.rs"), "mod a;\nmod b;\n").unwrap();
    std::fs::write(dir.join("a.rs"), "use crate::b::c::Thing;\n").unwrap();
    std::fs::write(dir.join("b/mod.rs"), "mod c;\npub fn f() {}\n").unwrap();
    // c → a through an expression path, a → c through a use, b only declares c.
    std::fs::write(
        dir.join("b/c.rs"),
        "pub struct Thing;\nfn g() { crate::a::h(); }\n",
    )
    .unwrap();
    let krate = Crate::load(&dir);
    let found = cycles(&edges(&krate));
    assert_eq!(found, vec!["a → b::c → a".to_owned()]);
    // A child naming its parent's item while the parent names the child's is a cycle too.
    std::fs::write(dir.join("a.rs"), "").unwrap();
    std::fs::write(
        dir.join("b/mod.rs"),
        "mod c;\npub use c::Thing;\npub fn f() {}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("b/c.rs"),
        "pub struct Thing;\nfn g() { super::f(); }\n",
    )
    .unwrap();
    let found = cycles(&edges(&Crate::load(&dir)));
    assert_eq!(found, vec!["b → b::c → b".to_owned()]);
    // Visibility is not an edge.
    std::fs::write(
        dir.join("b/c.rs"),
        "pub(super) struct Thing;\npub(crate) fn g() {}\n",
    )
    .unwrap();
    assert!(cycles(&edges(&Crate::load(&dir))).is_empty());
    // Unit tests inside a file are not edges.
    std::fs::write(
        dir.join("b/c.rs"),
        "pub struct Thing;\n#[cfg(test)]\nmod tests { use super::super::f; }\n",
    )
    .unwrap();
    assert!(cycles(&edges(&Crate::load(&dir))).is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}
