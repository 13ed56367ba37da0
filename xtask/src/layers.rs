//! `cargo xtask layers`: the module graph of hcp's library (`hcp-user/src`,
//! the files `lib.rs` reaches through `mod` declarations; the binary's own
//! files are not part of it) and any import cycle in it.
//!
//! The library is meant to be layered: a module only uses modules below it,
//! and a lower layer never reaches up. Types two layers share live in the
//! lower one. A cycle means two modules can be neither understood nor
//! changed apart, so the check fails on one and names, for each import in
//! it, a line that creates it.
//!
//! Each file is a node. Its edges are the paths in its code (comments and
//! string literals stripped) that start with `crate::`, `super::`, `self::`
//! or the name of a child module (`pub use start::start` in a `mod.rs`),
//! `use` groups expanded, each resolved to the longest prefix that names a
//! file. `mod x;` is containment, not an edge. A simple text scan, not a
//! parser: macros and `#[path]` attributes are not understood.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

#[derive(Args)]
pub struct LayersArgs {
    /// One node per folder (`session`, `dm`, ...) instead of one per file.
    #[arg(long)]
    folders: bool,
}

pub fn run(args: &LayersArgs) -> Result<()> {
    let graph = Graph::of(&crate::workspace_root().join("hcp-user/src"), args.folders)?;
    let (layer, chain) = graph.layers();
    let mut order: Vec<usize> = (0..graph.nodes.len()).collect();
    order.sort_by_key(|&n| (layer[n], &graph.nodes[n]));
    let width = graph.nodes.iter().map(String::len).max().unwrap_or(0);
    for n in order {
        let uses: Vec<&str> = graph.uses(n).map(|m| graph.nodes[m].as_str()).collect();
        println!("{}", format!("{:>2}  {:<width$}  {}", layer[n], graph.nodes[n], uses.join(", ")).trim_end());
    }
    let step = |scc: &Vec<usize>| match scc.len() {
        1 => graph.nodes[scc[0]].clone(),
        n => format!("{} (+{} in a cycle)", graph.nodes[scc[0]], n - 1),
    };
    let steps: Vec<String> = chain.iter().map(step).collect();
    let (nodes, edges) = (graph.nodes.len(), graph.edges.len());
    println!("{nodes} nodes, {edges} edges, {} layers deep: {}", chain.len(), steps.join(" -> "));
    let cycles = graph.cycles();
    if cycles.is_empty() {
        println!("no import cycles");
        return Ok(());
    }
    print!("{}", graph.describe(&cycles));
    bail!("{} import cycle(s) in hcp-user/src", cycles.len());
}

/// A path found in a file: its segments, the inline modules (`mod tests {`)
/// around it, and its line.
type Found = (Vec<String>, Vec<String>, usize);

/// What one file declares and uses.
#[derive(Default)]
struct Parsed {
    children: Vec<String>,
    paths: Vec<Found>,
}

/// The text with comments and string and char literals blanked out (line
/// breaks kept, so line numbers stay right).
fn strip(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |out: &mut String, s: &[char]| out.extend(s.iter().map(|&ch| if ch == '\n' { '\n' } else { ' ' }));
    let ident = |i: usize| i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_');
    // r"..." or r#"..."# (not a raw identifier like r#type).
    let raw = |i: usize| c[i + 1..].iter().find(|&&ch| ch != '#') == Some(&'"');
    let mut i = 0;
    while i < c.len() {
        let end = if c[i..].starts_with(&['/', '/']) {
            c[i..].iter().position(|&ch| ch == '\n').map_or(c.len(), |p| i + p)
        } else if c[i..].starts_with(&['/', '*']) {
            c[i + 2..].windows(2).position(|w| w == ['*', '/']).map_or(c.len(), |p| i + 4 + p)
        } else if c[i] == 'r' && (!ident(i) || c[i - 1] == 'b' && !ident(i - 1)) && raw(i) {
            let hashes = c[i + 1..].iter().take_while(|&&ch| ch == '#').count();
            let close: Vec<char> = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
            let body = i + 2 + hashes;
            c.get(body..)
                .and_then(|rest| rest.windows(close.len()).position(|w| w == close))
                .map_or(c.len(), |p| body + p + close.len())
        } else if c[i] == '"' {
            let mut j = i + 1;
            while j < c.len() && c[j] != '"' {
                j += if c[j] == '\\' { 2 } else { 1 };
            }
            j + 1
        } else if c[i] == '\'' && c.get(i + 1) == Some(&'\\') {
            c.get(i + 3..).and_then(|rest| rest.iter().position(|&ch| ch == '\'')).map_or(c.len(), |p| i + 4 + p)
        } else if c[i] == '\'' && c.get(i + 2) == Some(&'\'') {
            i + 3
        } else {
            out.push(c[i]);
            i += 1;
            continue;
        };
        let end = end.min(c.len());
        blank(&mut out, &c[i..end]);
        i = end;
    }
    out
}

/// Tokens (identifiers, `::`, single punctuation) with their line numbers.
fn tokens(text: &str) -> Vec<(&str, usize)> {
    let (mut out, mut line, mut i) = (Vec::new(), 1, 0);
    let b = text.as_bytes();
    while i < b.len() {
        let len = if b[i].is_ascii_alphanumeric() || b[i] == b'_' {
            b[i..].iter().take_while(|&&ch| ch.is_ascii_alphanumeric() || ch == b'_').count()
        } else if b[i..].starts_with(b"::") {
            2
        } else {
            text[i..].chars().next().map_or(1, char::len_utf8)
        };
        if b[i] == b'\n' {
            line += 1;
        } else if !b[i].is_ascii_whitespace() {
            out.push((&text[i..i + len], line));
        }
        i += len;
    }
    out
}

fn is_ident(tok: &str) -> bool {
    tok.starts_with(|ch: char| ch.is_ascii_alphabetic() || ch == '_')
}

/// Reads one path or `use` tree at `t[i]` under `prefix`, pushing every full
/// path (groups expanded) into `out`; returns the index after it.
fn tree(t: &[&str], mut i: usize, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix.to_vec();
    loop {
        match t.get(i).copied() {
            Some("{") => {
                i += 1;
                while i < t.len() && t[i] != "}" {
                    let next = tree(t, i, &path, out);
                    i = if next == i || t.get(next) == Some(&",") { next + 1 } else { next };
                }
                return i + 1;
            }
            Some("*") => i += 1,
            Some(tok) if is_ident(tok) => {
                path.push(tok.into());
                i += 1;
                if t.get(i) == Some(&"::") {
                    i += 1;
                    continue;
                }
                if t.get(i) == Some(&"as") {
                    i += 2;
                }
            }
            _ => {}
        }
        out.push(path);
        return i;
    }
}

/// The child modules a file declares and every path its code names.
fn parse(text: &str) -> Parsed {
    let clean = strip(text);
    let t = tokens(&clean);
    let words: Vec<&str> = t.iter().map(|&(tok, _)| tok).collect();
    let (mut parsed, mut inline, mut depth) = (Parsed::default(), Vec::<(String, usize)>::new(), 0usize);
    let mut i = 0;
    while i < t.len() {
        let (tok, line) = t[i];
        let next = |k: usize| words.get(i + k).copied().unwrap_or("");
        match tok {
            "{" => depth += 1,
            "}" => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|&(_, d)| d == depth) {
                    inline.pop();
                }
            }
            "mod" if is_ident(next(1)) && next(2) == ";" && inline.is_empty() => parsed.children.push(next(1).into()),
            "mod" if is_ident(next(1)) && next(2) == "{" => inline.push((next(1).into(), depth)),
            _ if is_ident(tok) && next(1) == "::" && (i == 0 || words[i - 1] != "::") => {
                let mut found = Vec::new();
                i = tree(&words, i, &[], &mut found);
                let names: Vec<String> = inline.iter().map(|(name, _)| name.clone()).collect();
                parsed.paths.extend(found.into_iter().map(|path| (path, names.clone(), line)));
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    parsed
}

/// The absolute path (from the crate root) that `path`, found in module
/// `module` inside inline modules `inline`, names; None if it leaves the crate.
fn resolve(module: &[String], children: &[String], (path, inline, _): &Found) -> Option<Vec<String>> {
    let mut here: Vec<String> = module.iter().chain(inline).cloned().collect();
    let rest = match path.first()?.as_str() {
        "crate" => {
            here.clear();
            &path[1..]
        }
        "self" => &path[1..],
        "super" => {
            let supers = path.iter().take_while(|seg| *seg == "super").count();
            here.truncate(here.len().checked_sub(supers)?);
            &path[supers..]
        }
        first if inline.is_empty() && children.iter().any(|child| child == first) => path,
        _ => return None,
    };
    here.extend(rest.iter().filter(|seg| *seg != "self").cloned());
    Some(here)
}

/// One file of the library, named by its module path.
struct Module {
    name: Vec<String>,
    file: PathBuf,
    parsed: Parsed,
}

/// Every file `lib.rs` reaches through `mod x;`, as `x.rs` or `x/mod.rs`.
fn modules(src: &Path) -> Result<Vec<Module>> {
    let (mut out, mut todo) = (Vec::new(), vec![(Vec::new(), src.join("lib.rs"))]);
    while let Some((name, file)) = todo.pop() {
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        let parsed = parse(&text);
        let dir = match file.file_name().and_then(|f| f.to_str()) {
            Some("lib.rs" | "mod.rs") => file.parent().unwrap_or(src).to_path_buf(),
            _ => file.with_extension(""),
        };
        for child in &parsed.children {
            let path =
                [dir.join(format!("{child}.rs")), dir.join(child).join("mod.rs")].into_iter().find(|p| p.exists());
            let path = path.with_context(|| format!("{}: no file for `mod {child};`", file.display()))?;
            todo.push(([name.clone(), vec![child.clone()]].concat(), path));
        }
        out.push(Module { name, file, parsed });
    }
    Ok(out)
}

/// Nodes (sorted names) and edges, each with one `file:line` that creates it.
struct Graph {
    nodes: Vec<String>,
    edges: BTreeMap<(usize, usize), String>,
}

impl Graph {
    /// The graph of the library under `src`: one node per file, or per folder.
    fn of(src: &Path, folders: bool) -> Result<Graph> {
        let modules = modules(src)?;
        let root = src.ancestors().nth(2).unwrap_or(src);
        let known: BTreeSet<&[String]> = modules.iter().map(|m| m.name.as_slice()).collect();
        let node = |name: &[String]| match name {
            [] => "crate".to_string(),
            [first, ..] if folders => first.clone(),
            _ => name.join("::"),
        };
        let nodes: Vec<String> = modules.iter().map(|m| node(&m.name)).collect::<BTreeSet<_>>().into_iter().collect();
        let index = |name: &[String]| nodes.binary_search(&node(name)).expect("every module has a node");
        let mut edges = BTreeMap::new();
        for m in &modules {
            for found in &m.parsed.paths {
                let Some(path) = resolve(&m.name, &m.parsed.children, found) else { continue };
                let longest = (0..=path.len()).rev().find(|&k| known.contains(&path[..k])).unwrap_or(0);
                let (from, to) = (index(&m.name), index(&path[..longest]));
                let site = format!("{}:{}", m.file.strip_prefix(root).unwrap_or(&m.file).display(), found.2);
                if from != to {
                    edges.entry((from, to)).or_insert(site);
                }
            }
        }
        Ok(Graph { nodes, edges })
    }

    fn uses(&self, n: usize) -> impl Iterator<Item = usize> + '_ {
        self.edges.range((n, 0)..(n + 1, 0)).map(|(&(_, to), _)| to)
    }

    /// Strongly connected components (Tarjan), each emitted after every
    /// component it uses.
    fn components(&self) -> Vec<Vec<usize>> {
        // index[v]: visit order (None: not yet); low[v]: lowest index v reaches on the stack.
        fn visit(
            g: &Graph,
            v: usize,
            index: &mut Vec<Option<usize>>,
            low: &mut Vec<usize>,
            stack: &mut Vec<usize>,
            out: &mut Vec<Vec<usize>>,
        ) {
            let i = index.iter().flatten().count();
            (index[v], low[v]) = (Some(i), i);
            stack.push(v);
            for w in g.uses(v) {
                match index[w] {
                    None => {
                        visit(g, w, index, low, stack, out);
                        low[v] = low[v].min(low[w]);
                    }
                    Some(j) if stack.contains(&w) => low[v] = low[v].min(j),
                    Some(_) => {}
                }
            }
            if low[v] == i {
                let mut scc = stack.split_off(stack.iter().position(|&w| w == v).unwrap_or(0));
                scc.sort_unstable();
                out.push(scc);
            }
        }
        let n = self.nodes.len();
        let (mut index, mut low, mut stack, mut out) = (vec![None; n], vec![0; n], Vec::new(), Vec::new());
        for v in 0..n {
            if index[v].is_none() {
                visit(self, v, &mut index, &mut low, &mut stack, &mut out);
            }
        }
        out
    }

    /// Components of more than one node.
    fn cycles(&self) -> Vec<Vec<usize>> {
        self.components().into_iter().filter(|scc| scc.len() > 1).collect()
    }

    /// Each node's layer (0: uses nothing; else one above the highest it
    /// uses, a cycle counting as one node) and a longest chain of imports,
    /// as components (a cycle shows as one step).
    fn layers(&self) -> (Vec<usize>, Vec<Vec<usize>>) {
        let sccs = self.components();
        let (mut layer, mut scc_of, mut below) =
            (vec![0; self.nodes.len()], vec![0; self.nodes.len()], vec![None; sccs.len()]);
        for (k, scc) in sccs.iter().enumerate() {
            let used = scc.iter().flat_map(|&v| self.uses(v)).filter(|w| !scc.contains(w));
            let (top, next) = used.map(|w| (layer[w] + 1, Some(scc_of[w]))).max().unwrap_or((0, None));
            for &v in scc {
                (layer[v], scc_of[v]) = (top, k);
            }
            below[k] = next;
        }
        let top = (0..sccs.len()).max_by_key(|&k| (layer[sccs[k][0]], std::cmp::Reverse(sccs[k][0])));
        let chain = std::iter::successors(top, |&k| below[k]).map(|k| sccs[k].clone()).collect();
        (layer, chain)
    }

    /// The cycles for a developer: their nodes, and a line for each edge.
    fn describe(&self, cycles: &[Vec<usize>]) -> String {
        let mut out = String::new();
        for scc in cycles {
            let names: Vec<&str> = scc.iter().map(|&v| self.nodes[v].as_str()).collect();
            out += &format!("import cycle: {}\n", names.join(", "));
            for ((from, to), site) in self.edges.iter().filter(|((f, t), _)| scc.contains(f) && scc.contains(t)) {
                out += &format!("  {} -> {}  ({site})\n", self.nodes[*from], self.nodes[*to]);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(text: &str) -> Vec<String> {
        parse(text).paths.iter().map(|(path, _, line)| format!("{}@{line}", path.join("::"))).collect()
    }

    #[test]
    fn use_groups_are_expanded() {
        let text = "use crate::{a, b::{self, c as d, e::*}};\nuse std::{fs, io::Read};\nfn f() { super::g(); }";
        let expected = "crate::a@1 crate::b::self@1 crate::b::c@1 crate::b::e@1 std::fs@2 std::io::Read@2 super::g@3";
        assert_eq!(paths(text).join(" "), expected);
        let text = "let x = crate::a::f::<u8>(std::mem::size_of::<u8>());";
        assert_eq!(paths(text).join(" "), "crate::a::f@1 std::mem::size_of@1");
    }

    #[test]
    fn comments_and_strings_are_ignored() {
        let text = "// crate::a\n/* crate::b\n crate::c */ let s = \"crate::d \\\" crate::e\";\nlet r = r#\"crate::f\"#; let c = '\"'; crate::g::h();";
        assert_eq!(paths(text), ["crate::g::h@4"]);
    }

    #[test]
    fn children_and_inline_modules() {
        let parsed =
            parse("pub mod a;\nmod b;\npub use a::X;\n#[cfg(test)]\nmod tests {\n    use super::*;\n}\nuse super::c;");
        assert_eq!(parsed.children, ["a", "b"]);
        let module = ["dir".to_string()];
        let resolved: Vec<_> = parsed.paths.iter().filter_map(|f| resolve(&module, &parsed.children, f)).collect();
        assert_eq!(resolved, [vec!["dir", "a", "X"], vec!["dir"], vec!["c"]]);
    }

    fn graph(nodes: &[&str], edges: &[(usize, usize)]) -> Graph {
        let edges = edges.iter().map(|&e| (e, format!("{}.rs:1", nodes[e.0]))).collect();
        Graph { nodes: nodes.iter().map(|n| n.to_string()).collect(), edges }
    }

    #[test]
    fn cycles_and_layers() {
        // a -> b -> c -> b, c -> d; e alone.
        let g = graph(&["a", "b", "c", "d", "e"], &[(0, 1), (1, 2), (2, 1), (2, 3)]);
        assert_eq!(g.cycles(), [vec![1, 2]]);
        assert_eq!(g.layers(), (vec![2, 1, 1, 0, 0], vec![vec![0], vec![1, 2], vec![3]]));
        assert_eq!(g.describe(&g.cycles()), "import cycle: b, c\n  b -> c  (b.rs:1)\n  c -> b  (c.rs:1)\n");
        assert!(graph(&["a", "b"], &[(0, 1)]).cycles().is_empty());
    }

    #[test]
    fn hcp_user_has_no_import_cycles() {
        let root = crate::workspace_root().join("hcp-user/src");
        for folders in [false, true] {
            let g = Graph::of(&root, folders).unwrap();
            let cycles = g.cycles();
            let what = if folders { "folders" } else { "modules" };
            assert!(cycles.is_empty(), "import cycles between the {what} of hcp-user/src:\n{}", g.describe(&cycles));
        }
    }
}
