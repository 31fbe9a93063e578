//! The module layers of `DESIGN.md`, checked on the source: a module uses only modules of its own
//! layer or below, and no two modules use each other (directly or through others). Adding a module
//! means placing it in [`LAYERS`].

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every top-level module of the crate, by layer (lowest first).
const LAYERS: &[&[&str]] = &[
    // L0: leaves (TLS material and policy, name resolution use no other module of the crate)
    &["clock", "dns", "headers", "paths", "tls"],
    // L1: settings, the schema language and one descriptor per entity
    &["config", "model"],
    // L2: who a request is, where it goes
    &["balancer", "identity", "router"],
    // L3: the plugin trait, chains, bundled plugins
    &["plugins"],
    // L4: compiling a configuration, rows in, snapshot out; declarative files in, rows out
    &["declarative", "snapshot"],
    // L5: persistence and following it
    &["store", "sync"],
    // L6: what speaks to the network
    &["proxy", "admin", "auth", "cluster", "gui", "scrapes"],
    // L7: wiring
    &["metrics", "node"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// `crate::<module>` references of every file under `src/<module>`, as module → modules it uses.
fn uses() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("src readable") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(&src).expect("under src");
            let module = rel.components().next().and_then(|c| c.as_os_str().to_str()).unwrap_or_default();
            let module = module.trim_end_matches(".rs").to_string();
            if module == "lib" || module == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("source readable");
            // Tests may reach anywhere; only the code itself is layered.
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            for part in code.split("crate::").skip(1) {
                // `crate::a::…`, or a group `crate::{a::…, b}`.
                let names: Vec<&str> = match part.strip_prefix('{') {
                    Some(group) => group.split('}').next().unwrap_or_default().split(',').collect(),
                    None => vec![part],
                };
                for name in names {
                    let used: String =
                        name.trim().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                    // `crate::VERSION` and the like are the crate root's, not a module's.
                    let is_module = used.starts_with(|c: char| c.is_ascii_lowercase());
                    if is_module && used != module {
                        graph.entry(module.clone()).or_default().insert(used);
                    }
                }
            }
            graph.entry(module).or_default();
        }
    }
    graph
}

#[test]
fn every_module_sits_in_a_layer_and_uses_only_its_layer_and_below() {
    let graph = uses();
    let mut wrong = Vec::new();
    for (module, used) in &graph {
        let Some(own) = layer_of(module) else {
            wrong.push(format!("{module} is in no layer"));
            continue;
        };
        for u in used {
            match layer_of(u) {
                Some(l) if l <= own => {}
                Some(l) => wrong.push(format!("{module} (L{own}) uses {u} (L{l})")),
                None => wrong.push(format!("{module} uses {u}, which is in no layer")),
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn no_module_cycle() {
    let graph = uses();
    // Depth-first search for a back edge.
    fn visit<'g>(
        m: &'g str,
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'g str>,
        done: &mut BTreeSet<&'g str>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| *p == m) {
            return Some(path[i..].iter().map(|s| s.to_string()).chain([m.to_string()]).collect());
        }
        if !done.insert(m) {
            return None;
        }
        path.push(m);
        for next in graph.get(m).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        if let Some(cycle) = visit(m, &graph, &mut Vec::new(), &mut done) {
            panic!("module cycle: {}", cycle.join(" → "));
        }
    }
}
