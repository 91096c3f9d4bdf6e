//! `autoresearch`: the research CLI. See `autoresearch --help`, and runner/README.md for how this crate is laid out.

mod agents;
mod checks;
mod cli;
mod cmd;
mod config;
mod curve;
mod db;
mod errors;
mod executor;
mod git;
mod guard;
mod keep;
mod layout;
mod pidfile;
mod platform;
mod process;
mod progress;
mod proposer;
mod report;
mod results;
mod runloop;
mod throughput;
mod tree;

fn main() {
    std::process::exit(cli::main());
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};

    /// The top-level modules each top-level module names through `crate::` outside its tests
    /// (a folder module and its files are one).
    fn imports() -> BTreeMap<String, BTreeSet<String>> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files: Vec<PathBuf> = Vec::new();
        let mut dirs = vec![src.clone()];
        while let Some(dir) = dirs.pop() {
            for path in std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()) {
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") && path.file_stem().is_some_and(|s| s != "tests") {
                    files.push(path);
                }
            }
        }
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for path in files {
            let first = path.strip_prefix(&src).unwrap().components().next().unwrap();
            let unit = first.as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
            if unit == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code: String = text.split("#[cfg(test)]\nmod tests").next().unwrap().lines().map(|l| l.split("//").next().unwrap()).collect::<Vec<_>>().join("\n");
            let deps = graph.entry(unit.clone()).or_default();
            for (at, _) in code.match_indices("crate::") {
                let rest = &code[at + "crate::".len()..];
                let names: Vec<&str> = match rest.strip_prefix('{') {
                    Some(list) => list.split('}').next().unwrap().split(',').collect(),
                    None => vec![rest],
                };
                for name in names {
                    let name: String = name.trim().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                    if !name.is_empty() && name != unit {
                        deps.insert(name);
                    }
                }
            }
        }
        graph
    }

    /// A chain of imports that comes back to where it started, if there is one.
    fn circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
        fn visit(m: &str, graph: &BTreeMap<String, BTreeSet<String>>, path: &mut Vec<String>, done: &mut BTreeSet<String>) -> Option<Vec<String>> {
            if let Some(i) = path.iter().position(|p| p == m) {
                let mut c = path[i..].to_vec();
                c.push(m.to_string());
                return Some(c);
            }
            if done.contains(m) {
                return None;
            }
            path.push(m.to_string());
            for d in graph.get(m).into_iter().flatten() {
                if let Some(c) = visit(d, graph, path, done) {
                    return Some(c);
                }
            }
            path.pop();
            done.insert(m.to_string());
            None
        }
        let mut done = BTreeSet::new();
        graph.keys().find_map(|m| visit(m, graph, &mut Vec::new(), &mut done))
    }

    /// The runner is layered (see runner/README.md): `cli` dispatches to the commands in `cmd`,
    /// which use the loop, which uses the executors, keep rules, proposers and the report, which
    /// sit on a domain floor (`layout`, `tree`, `config`, `db`, ...). No module imports one that
    /// imports it back, through any chain, and only `cli` imports the commands.
    #[test]
    fn no_two_modules_import_each_other() {
        let graph = imports();
        assert!(graph["runloop"].contains("tree") && graph["tree"].contains("db") && graph["cli"].contains("cmd"), "the scan finds the imports: {graph:?}");
        let mut looped = graph.clone();
        looped.get_mut("tree").unwrap().insert("runloop".into());
        assert!(circle(&looped).is_some(), "a circle is found");
        if let Some(c) = circle(&graph) {
            panic!("an import circle: {}", c.join(" -> "));
        }
        for (m, deps) in &graph {
            assert!(m == "cli" || !deps.contains("cmd"), "{m} imports the commands; only cli may");
            assert!(!deps.contains("cli"), "{m} imports cli");
        }
    }
}
