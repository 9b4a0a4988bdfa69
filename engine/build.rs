//! Generates the typed bindings of the Lua scripts from their headers.
//!
//! Each `lua/<name>.lua` declares, once, in its `--[[ ]]` header:
//!
//! ```text
//!   Keys:
//!     order_key     order hash
//!     per line: item_key, pc_key
//!   Args:
//!     outcome: PaymentOutcome   what the provider said
//!     per line: item str, qty int
//!   Reply: Transition
//! ```
//!
//! From that one declaration this script writes both sides of the boundary:
//! the Lua prologue that binds every name to its position (`local order_key
//! = KEYS[1]`, `LINE_KEYS` for the first per-line key), and a Rust module per
//! script with `Keys` and `Args` structs whose fields are those names with
//! those types, and the reply type. A script body may not index `KEYS` or
//! `ARGV` by a number, and must use every name it declares; a Rust caller
//! builds the structs by field name. So reordering, renaming or retyping an
//! argument on one side only fails the build, here or in rustc.
//!
//! Transition scripts (`Reply: Transition`) refuse with
//! `reply('err', o, '<code>')`; the codes of all of them become the
//! `Refusal` enum, so a caller matching a code no script gives fails to
//! compile.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

/// One declared argument: its name and header type.
struct Arg {
    name: String,
    ty: String,
}

/// A repeated tail (`per line: ...`): noun and the names in one repetition.
struct Tail<T> {
    noun: String,
    items: Vec<T>,
}

struct Signature {
    name: String,
    keys: Vec<String>,
    key_tail: Option<Tail<String>>,
    args: Vec<Arg>,
    arg_tail: Option<Tail<Arg>>,
    reply: String,
    /// The script's first line: `#!lua flags=allow-oom` for one that
    /// finishes work already accepted, `#!lua` for one that takes new work.
    shebang: &'static str,
    body: String,
}

/// Header type → (Rust type, Lua conversion of the raw string).
fn arg_type(ty: &str) -> Result<(String, bool), String> {
    let numeric = |rust: &str| Ok((rust.to_string(), true));
    let raw = |rust: &str| Ok((rust.to_string(), false));
    match ty {
        "str" => raw("String"),
        "int" => numeric("i64"),
        "count" => numeric("u64"),
        "ms" => numeric("std::time::Duration"),
        "version?" => raw("Option<u64>"),
        "flag" => raw("bool"),
        "flag?" => raw("Option<bool>"),
        "str?" => raw("Option<String>"),
        "int?" => raw("Option<i64>"),
        other if other.starts_with(|c: char| c.is_ascii_uppercase()) => raw(other),
        other => Err(format!("unknown argument type `{other}`")),
    }
}

fn is_ident(word: &str) -> bool {
    !word.is_empty()
        && word.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && word
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// The indented entries of a `Section:` of the header (continuation lines,
/// indented deeper, are skipped).
fn section<'a>(header: &'a str, title: &str) -> Result<Vec<&'a str>, String> {
    let mut lines = header.lines();
    let first = lines
        .find(|l| l.trim_start().starts_with(title))
        .ok_or(format!("no `{title}` section"))?;
    let indent = first.len() - first.trim_start().len();
    if first.trim() != title {
        let rest = first.trim()[title.len()..].trim();
        return if rest == "none" {
            Ok(Vec::new())
        } else {
            Err(format!(
                "`{title}` takes its entries on the lines below, or `none`"
            ))
        };
    }
    let mut entries = Vec::new();
    for line in lines {
        let depth = line.len() - line.trim_start().len();
        if line.trim().is_empty() || depth <= indent {
            break;
        }
        if depth == indent + 2 {
            entries.push(line.trim());
        }
    }
    Ok(entries)
}

fn parse_arg(text: &str) -> Result<Arg, String> {
    let mut words = text.split_whitespace();
    let (name, ty) = match (words.next(), words.next()) {
        (Some(n), Some(t)) if n.ends_with(':') => (n.trim_end_matches(':'), t),
        (Some(n), Some(t)) => (n, t),
        _ => {
            return Err(format!(
                "`{text}`: an argument is `name: type  description`"
            ));
        }
    };
    if !is_ident(name) {
        return Err(format!("`{name}` is not a Lua/Rust name"));
    }
    arg_type(ty)?;
    Ok(Arg {
        name: name.into(),
        ty: ty.into(),
    })
}

fn parse_tail(entry: &str) -> Option<(String, &str)> {
    let rest = entry.strip_prefix("per ")?;
    let (noun, items) = rest.split_once(':')?;
    Some((noun.trim().to_string(), items.trim()))
}

fn parse(name: &str, source: &str) -> Result<Signature, String> {
    let end = source.find("]]").ok_or("no --[[ ]] header")?;
    let (header, body) = (&source[..end], &source[end + 2..]);
    let mut keys = Vec::new();
    let mut key_tail = None;
    for entry in section(header, "Keys:")? {
        if let Some((noun, items)) = parse_tail(entry) {
            let items: Vec<String> = items.split(',').map(|k| k.trim().to_string()).collect();
            if let Some(bad) = items.iter().find(|k| !is_ident(k)) {
                return Err(format!("per-{noun} key `{bad}` is not a name"));
            }
            key_tail = Some(Tail { noun, items });
        } else {
            let key = entry.split_whitespace().next().unwrap_or_default();
            if !is_ident(key) {
                return Err(format!("key `{key}` is not a name"));
            }
            keys.push(key.to_string());
        }
    }
    let mut args = Vec::new();
    let mut arg_tail = None;
    for entry in section(header, "Args:")? {
        if let Some((noun, items)) = parse_tail(entry) {
            let items = items
                .split(',')
                .map(|a| parse_arg(a.trim()))
                .collect::<Result<Vec<_>, _>>()?;
            arg_tail = Some(Tail { noun, items });
        } else {
            args.push(parse_arg(entry)?);
        }
    }
    let reply = header
        .lines()
        .find_map(|l| l.trim().strip_prefix("Reply:"))
        .ok_or("no `Reply:` line")?
        .trim()
        .to_string();
    let shebang = match header
        .lines()
        .find_map(|l| l.trim().strip_prefix("Memory:"))
        .map(|m| m.split_whitespace().next().unwrap_or_default())
    {
        Some("finishes") => "#!lua flags=allow-oom",
        Some("grows") => "#!lua",
        Some(other) => return Err(format!("`Memory: {other}`: say `finishes` or `grows`")),
        None => return Err("no `Memory:` line (`finishes` or `grows`)".into()),
    };
    Ok(Signature {
        name: name.into(),
        keys,
        key_tail,
        args,
        arg_tail,
        reply,
        shebang,
        body: body.to_string(),
    })
}

/// The body may not name a position, and uses every name it declares.
fn check_body(sig: &Signature) -> Result<(), String> {
    let code: String = sig
        .body
        .lines()
        .map(|l| l.split("--").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    for array in ["KEYS[", "ARGV["] {
        for (at, _) in code.match_indices(array) {
            let next = code[at + array.len()..].trim_start();
            if next.starts_with(|c: char| c.is_ascii_digit()) {
                return Err(format!(
                    "indexes {array}<number>]: use the names its header declares"
                ));
            }
        }
    }
    let words: BTreeSet<&str> = code
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .collect();
    let mut declared: Vec<String> = sig.keys.clone();
    declared.extend(sig.args.iter().map(|a| a.name.clone()));
    if let Some(tail) = &sig.key_tail {
        declared.push(format!("{}_KEYS", tail.noun.to_uppercase()));
    }
    if let Some(tail) = &sig.arg_tail {
        declared.push(format!("{}_ARGS", tail.noun.to_uppercase()));
    }
    match declared.iter().find(|d| !words.contains(d.as_str())) {
        Some(unused) => Err(format!("declares `{unused}` but never uses it")),
        None => Ok(()),
    }
}

/// The Lua lines that bind every declared name to its position.
fn prologue(sig: &Signature) -> String {
    let mut lua = String::from("-- Generated from the header by engine/build.rs.\n");
    if !sig.keys.is_empty() {
        let positions: Vec<String> = (1..=sig.keys.len()).map(|i| format!("KEYS[{i}]")).collect();
        writeln!(
            lua,
            "local {} = {}",
            sig.keys.join(", "),
            positions.join(", ")
        )
        .unwrap();
    }
    if let Some(tail) = &sig.key_tail {
        let noun = tail.noun.to_uppercase();
        writeln!(lua, "local {noun}_KEYS = {}", sig.keys.len() + 1).unwrap();
    }
    if !sig.args.is_empty() {
        let names: Vec<&str> = sig.args.iter().map(|a| a.name.as_str()).collect();
        let values: Vec<String> = sig
            .args
            .iter()
            .enumerate()
            .map(|(i, a)| match arg_type(&a.ty) {
                Ok((_, true)) => format!("tonumber(ARGV[{}])", i + 1),
                _ => format!("ARGV[{}]", i + 1),
            })
            .collect();
        writeln!(lua, "local {} = {}", names.join(", "), values.join(", ")).unwrap();
    }
    if let Some(tail) = &sig.arg_tail {
        let noun = tail.noun.to_uppercase();
        writeln!(lua, "local {noun}_ARGS = {}", sig.args.len() + 1).unwrap();
    }
    lua
}

fn camel(snake: &str) -> String {
    snake
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn rust_type(ty: &str) -> String {
    arg_type(ty).expect("checked when parsed").0
}

/// `Keys`: one field per declared key, the per-item tail as arrays.
fn keys_struct(sig: &Signature) -> String {
    let mut rs = String::new();
    writeln!(rs, "    /// The keys, in the header's order.\n    #[derive(Debug, Clone)]\n    pub struct Keys {{").unwrap();
    for key in &sig.keys {
        writeln!(rs, "        pub {key}: String,").unwrap();
    }
    if let Some(tail) = &sig.key_tail {
        let n = tail.items.len();
        writeln!(
            rs,
            "        /// Per {}: {}.",
            tail.noun,
            tail.items.join(", ")
        )
        .unwrap();
        writeln!(rs, "        pub {}s: Vec<[String; {n}]>,", tail.noun).unwrap();
    }
    writeln!(rs, "    }}").unwrap();
    writeln!(
        rs,
        "    impl Keys {{\n        pub fn into_vec(self) -> Vec<String> {{"
    )
    .unwrap();
    writeln!(
        rs,
        "            #[allow(unused_mut)]\n            let mut keys = vec![{}];",
        sig.keys
            .iter()
            .map(|k| format!("self.{k}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
    .unwrap();
    if let Some(tail) = &sig.key_tail {
        writeln!(
            rs,
            "            keys.extend(self.{}s.into_iter().flatten());",
            tail.noun
        )
        .unwrap();
    }
    writeln!(rs, "            keys\n        }}\n    }}").unwrap();
    rs
}

/// `Args`: one typed field per declared argument, the tail as tuples.
fn args_struct(sig: &Signature) -> String {
    let mut rs = String::new();
    writeln!(rs, "    /// The arguments, in the header's order.\n    #[derive(Debug, Clone)]\n    pub struct Args {{").unwrap();
    for arg in &sig.args {
        writeln!(rs, "        pub {}: {},", arg.name, rust_type(&arg.ty)).unwrap();
    }
    if let Some(tail) = &sig.arg_tail {
        let types: Vec<String> = tail.items.iter().map(|a| rust_type(&a.ty)).collect();
        let names: Vec<&str> = tail.items.iter().map(|a| a.name.as_str()).collect();
        writeln!(rs, "        /// Per {}: ({}).", tail.noun, names.join(", ")).unwrap();
        writeln!(
            rs,
            "        pub {}s: Vec<({})>,",
            tail.noun,
            types.join(", ")
        )
        .unwrap();
    }
    writeln!(rs, "    }}").unwrap();
    writeln!(
        rs,
        "    impl Args {{\n        pub fn into_vec(self) -> Vec<String> {{"
    )
    .unwrap();
    writeln!(
        rs,
        "            #[allow(unused_mut)]\n            let mut args: Vec<String> = vec![{}];",
        sig.args
            .iter()
            .map(|a| format!("self.{}.arg()", a.name))
            .collect::<Vec<_>>()
            .join(", ")
    )
    .unwrap();
    if let Some(tail) = &sig.arg_tail {
        let parts: Vec<String> = (0..tail.items.len())
            .map(|i| format!("item.{i}.arg()"))
            .collect();
        writeln!(
            rs,
            "            for item in self.{}s {{ args.extend([{}]); }}",
            tail.noun,
            parts.join(", ")
        )
        .unwrap();
    }
    writeln!(rs, "            args\n        }}\n    }}").unwrap();
    rs
}

fn module(sig: &Signature, lua_dir: &Path) -> String {
    let mut rs = String::new();
    let name = &sig.name;
    let path = lua_dir.join(format!("{name}.lua"));
    writeln!(rs, "/// Binding of `lua/{name}.lua`.").unwrap();
    writeln!(rs, "pub mod {name} {{").unwrap();
    writeln!(rs, "    #[allow(unused_imports)]\n    use super::args::*;").unwrap();
    writeln!(rs, "    pub const NAME: &str = {name:?};").unwrap();
    writeln!(
        rs,
        "    /// The first line: whether Redis runs it past `maxmemory`.\n    pub const SHEBANG: &str = {:?};",
        sig.shebang
    )
    .unwrap();
    writeln!(
        rs,
        "    /// The prologue binding the header's names, then the file.\n    pub const BODY: &str = concat!({:?}, include_str!({:?}));",
        prologue(sig),
        path.display().to_string()
    )
    .unwrap();
    rs.push_str(&keys_struct(sig));
    rs.push_str(&args_struct(sig));
    writeln!(rs, "    /// The script's typed signature.\n    #[derive(Debug, Clone, Copy)]\n    pub struct Binding;").unwrap();
    writeln!(
        rs,
        "    impl super::Binding for Binding {{\n        const NAME: &'static str = NAME;\n        const SHEBANG: &'static str = SHEBANG;\n        const BODY: &'static str = BODY;\n        type Keys = Keys;\n        type Args = Args;\n        type Reply = super::replies::{};\n        fn keys(keys: Keys) -> Vec<String> {{ keys.into_vec() }}\n        fn args(args: Args) -> Vec<String> {{ args.into_vec() }}\n    }}",
        sig.reply
    )
    .unwrap();
    writeln!(rs, "}}\n").unwrap();
    rs
}

/// Every `reply('err', o, '<code>')` of the transition scripts.
fn refusals(sigs: &[Signature]) -> BTreeSet<String> {
    let mut codes = BTreeSet::new();
    for sig in sigs.iter().filter(|s| s.reply == "Transition") {
        for (at, _) in sig.body.match_indices("reply('err', o, '") {
            let rest = &sig.body[at + "reply('err', o, '".len()..];
            codes.insert(rest[..rest.find('\'').unwrap()].to_string());
        }
    }
    codes
}

fn refusal_enum(codes: &BTreeSet<String>) -> String {
    let mut rs = String::from(
        "/// Why a transition script refused (nothing changed): every code the\n\
         /// transition scripts give, collected from their bodies at build time.\n\
         #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]\npub enum Refusal {\n",
    );
    for code in codes {
        writeln!(rs, "    {},", camel(code)).unwrap();
    }
    rs.push_str("}\n\nimpl Refusal {\n    pub const ALL: &'static [Refusal] = &[");
    for code in codes {
        write!(rs, "Refusal::{}, ", camel(code)).unwrap();
    }
    rs.push_str("];\n\n    pub fn as_str(self) -> &'static str {\n        match self {\n");
    for code in codes {
        writeln!(rs, "            Refusal::{} => {code:?},", camel(code)).unwrap();
    }
    rs.push_str("        }\n    }\n\n    pub fn parse(code: &str) -> Option<Self> {\n        match code {\n");
    for code in codes {
        writeln!(
            rs,
            "            {code:?} => Some(Refusal::{}),",
            camel(code)
        )
        .unwrap();
    }
    rs.push_str("            _ => None,\n        }\n    }\n}\n\n");
    rs.push_str(
        "impl std::fmt::Display for Refusal {\n    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {\n        f.write_str(self.as_str())\n    }\n}\n\n",
    );
    rs
}

fn registry(sigs: &[Signature]) -> String {
    let mut rs = String::from(
        "/// Every script lunchrush runs, each with its typed binding.\n#[derive(Debug, Clone)]\npub struct Scripts {\n",
    );
    for sig in sigs {
        writeln!(rs, "    pub {0}: Bound<{0}::Binding>,", sig.name).unwrap();
    }
    rs.push_str("}\n\nimpl Scripts {\n    pub fn new() -> Self {\n        Self {\n");
    for sig in sigs {
        writeln!(rs, "            {}: Bound::new(),", sig.name).unwrap();
    }
    write!(
        rs,
        "        }}\n    }}\n\n    /// Every script, untyped (loading, listing).\n    pub fn all(&self) -> [&Script; {}] {{\n        [",
        sigs.len()
    )
    .unwrap();
    for sig in sigs {
        write!(rs, "&self.{}.script, ", sig.name).unwrap();
    }
    rs.push_str("]\n    }\n}\n");
    rs
}

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let lua_dir = Path::new(&manifest).join("../lua").canonicalize().unwrap();
    println!("cargo::rerun-if-changed={}", lua_dir.display());
    let mut files: Vec<_> = std::fs::read_dir(&lua_dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "lua"))
        .collect();
    files.sort();
    let mut sigs = Vec::new();
    let mut errors = Vec::new();
    for path in &files {
        println!("cargo::rerun-if-changed={}", path.display());
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let source = std::fs::read_to_string(path).unwrap();
        match parse(&name, &source).and_then(|sig| check_body(&sig).map(|()| sig)) {
            Ok(sig) => sigs.push(sig),
            Err(error) => errors.push(format!("lua/{name}.lua: {error}")),
        }
    }
    if !errors.is_empty() {
        panic!(
            "the script headers and bodies disagree:\n{}",
            errors.join("\n")
        );
    }
    let mut out = String::from("// Generated by engine/build.rs from the headers in lua/.\n\n");
    out.push_str(&refusal_enum(&refusals(&sigs)));
    for sig in &sigs {
        out.push_str(&module(sig, &lua_dir));
    }
    out.push_str(&registry(&sigs));
    let target = Path::new(&std::env::var("OUT_DIR").unwrap()).join("scripts.rs");
    std::fs::write(target, out).unwrap();
}
