//! What one file declares and refers to: its `mod name;` declarations and every path that
//! starts with `crate`, `$crate`, `super` or `self`, each with the inline modules it sits in.
//! A small tokenizer over the [`strip`](crate::strip)ped source, not a parser: it knows `use`
//! trees, paths, inline `mod` blocks and `#[cfg(test)]` items, which is all the graph needs.

use crate::strip::strip;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    /// `::`
    Colons,
    /// A number.
    Number,
    Punct(char),
}

fn tokenize(code: &str) -> Vec<Tok> {
    let chars: Vec<char> = code.chars().collect();
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let mut toks = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if word(c) {
            let start = i;
            while i < chars.len() && word(chars[i]) {
                i += 1;
            }
            toks.push(if c.is_ascii_digit() {
                Tok::Number
            } else {
                Tok::Ident(chars[start..i].iter().collect())
            });
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            toks.push(Tok::Colons);
            i += 2;
        } else {
            toks.push(Tok::Punct(c));
            i += 1;
        }
    }
    toks
}

/// What one file declares and refers to.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// `mod name;`: (inline modules around it, name).
    pub children: Vec<(Vec<String>, String)>,
    /// Paths starting with `crate`, `super` or `self` (`$crate` as `crate`): (inline modules
    /// around it, segments).
    pub paths: Vec<(Vec<String>, Vec<String>)>,
}

/// Scans a file. Items under `#[cfg(test)]` are skipped: test code is not product layering.
pub(crate) fn scan(source: &str) -> Scan {
    let toks = tokenize(&strip(source).code);
    let ident = |i: usize| match toks.get(i) {
        Some(Tok::Ident(name)) => Some(name.as_str()),
        _ => None,
    };
    let mut result = Scan::default();
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut pending_mod: Option<String> = None;
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        let names = || {
            inline
                .iter()
                .map(|(name, _)| name.clone())
                .collect::<Vec<_>>()
        };
        match &toks[i] {
            Tok::Punct('#') if is_cfg_test(&toks[i..]) => {
                i = after_item(&toks, i);
                continue;
            }
            Tok::Punct('{') => {
                depth += 1;
                if let Some(name) = pending_mod.take() {
                    inline.push((name, depth));
                }
            }
            Tok::Punct('}') => {
                if inline.last().is_some_and(|(_, at)| *at == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            Tok::Ident(word) if word == "mod" => {
                if let Some(name) = ident(i + 1) {
                    match toks.get(i + 2) {
                        Some(Tok::Punct(';')) => result.children.push((names(), name.to_owned())),
                        Some(Tok::Punct('{')) => pending_mod = Some(name.to_owned()),
                        _ => {}
                    }
                    i += 2;
                    continue;
                }
            }
            Tok::Ident(word) if word == "use" && toks.get(i + 1) != Some(&Tok::Punct('<')) => {
                let mut at = i + 1;
                let mut paths = Vec::new();
                use_tree(&toks, &mut at, Vec::new(), &mut paths);
                let scope = names();
                result.paths.extend(
                    paths
                        .into_iter()
                        .filter(|path| is_local(path))
                        .map(|path| (scope.clone(), path)),
                );
                while at < toks.len() && toks[at] != Tok::Punct(';') {
                    at += 1;
                }
                i = at;
                continue;
            }
            Tok::Ident(word)
                if matches!(word.as_str(), "crate" | "super" | "self")
                    && toks.get(i + 1) == Some(&Tok::Colons)
                    && (i == 0 || toks[i - 1] != Tok::Colons) =>
            {
                let (path, end) = inline_path(&toks, i);
                result.paths.push((names(), path));
                i = end;
                continue;
            }
            Tok::Punct('$')
                if ident(i + 1) == Some("crate") && toks.get(i + 2) == Some(&Tok::Colons) =>
            {
                let (path, end) = inline_path(&toks, i + 1);
                result.paths.push((names(), path));
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    result
}

/// Whether `toks` start with `#[cfg(test)]`.
fn is_cfg_test(toks: &[Tok]) -> bool {
    let expected = [
        Tok::Punct('#'),
        Tok::Punct('['),
        Tok::Ident("cfg".into()),
        Tok::Punct('('),
        Tok::Ident("test".into()),
        Tok::Punct(')'),
        Tok::Punct(']'),
    ];
    toks.starts_with(&expected)
}

/// The index after the item whose attributes start at `start`: after its `;`, or after the
/// `}` that closes its first block.
fn after_item(toks: &[Tok], start: usize) -> usize {
    let mut nesting = 0usize;
    let mut i = start;
    while i < toks.len() {
        match toks[i] {
            Tok::Punct('(' | '[') => nesting += 1,
            Tok::Punct(')' | ']') => nesting = nesting.saturating_sub(1),
            Tok::Punct(';') if nesting == 0 => return i + 1,
            Tok::Punct('{') if nesting == 0 => {
                let mut braces = 0usize;
                while i < toks.len() {
                    match toks[i] {
                        Tok::Punct('{') => braces += 1,
                        Tok::Punct('}') => {
                            braces -= 1;
                            if braces == 0 {
                                return i + 1;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
                return i;
            }
            _ => {}
        }
        i += 1;
    }
    i
}

fn is_local(path: &[String]) -> bool {
    path.first()
        .is_some_and(|first| matches!(first.as_str(), "crate" | "super" | "self"))
}

/// `ident (:: ident)*` from `start`; returns the segments and the index after them.
fn inline_path(toks: &[Tok], start: usize) -> (Vec<String>, usize) {
    let mut path = Vec::new();
    let mut i = start;
    while let Some(Tok::Ident(name)) = toks.get(i) {
        path.push(name.clone());
        if toks.get(i + 1) == Some(&Tok::Colons) && matches!(toks.get(i + 2), Some(Tok::Ident(_))) {
            i += 2;
        } else {
            i += 1;
            break;
        }
    }
    (path, i)
}

/// Expands one `use` tree (`a::{b, c::{d, *}}`) into full paths; `at` ends after it.
fn use_tree(toks: &[Tok], at: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut path = prefix;
    loop {
        match toks.get(*at) {
            Some(Tok::Colons | Tok::Punct('$')) => *at += 1,
            Some(Tok::Ident(name)) => {
                path.push(name.clone());
                *at += 1;
                if toks.get(*at) == Some(&Tok::Colons) {
                    *at += 1;
                    continue;
                }
                if matches!(toks.get(*at), Some(Tok::Ident(word)) if word == "as") {
                    *at += 2;
                }
                out.push(path);
                return;
            }
            Some(Tok::Punct('*')) => {
                *at += 1;
                out.push(path);
                return;
            }
            Some(Tok::Punct('{')) => {
                *at += 1;
                loop {
                    match toks.get(*at) {
                        Some(Tok::Punct('}')) => {
                            *at += 1;
                            return;
                        }
                        Some(Tok::Punct(',')) => *at += 1,
                        None | Some(Tok::Punct(';')) => return,
                        Some(_) => {
                            let before = *at;
                            use_tree(toks, at, path.clone(), out);
                            if *at == before {
                                *at += 1;
                            }
                        }
                    }
                }
            }
            _ => return,
        }
    }
}

/// The module path `path` names, seen from module `here`; `None` above the crate root.
pub(crate) fn absolute(here: &[String], path: &[String]) -> Option<Vec<String>> {
    let (mut module, rest) = match path.first().map(String::as_str) {
        Some("crate") => (Vec::new(), &path[1..]),
        Some("self") => (here.to_vec(), &path[1..]),
        Some("super") => (here.to_vec(), path),
        _ => return None,
    };
    let mut rest = rest.iter().peekable();
    while rest.peek().is_some_and(|segment| *segment == "super") {
        module.pop()?;
        rest.next();
    }
    module.extend(rest.filter(|segment| *segment != "self").cloned());
    Some(module)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(source: &str) -> Vec<String> {
        scan(source)
            .paths
            .into_iter()
            .map(|(inline, path)| format!("{}|{}", inline.join("::"), path.join("::")))
            .collect()
    }

    #[test]
    fn use_groups_and_inline_paths_are_found() {
        let found = paths(
            "use crate::{a::{b, c as d, self}, e::*};\nuse super::f;\nuse std::x;\n\
             fn g() { crate::h::i(); self::j::K; x::crate_like(); $crate::m::n!(); }\n\
             mod inner { use super::*; }\npub(crate) fn p() {}\n\
             #[utoipa::path(get, responses((body = super::o::Answer)))] fn q() {}",
        );
        assert_eq!(
            found,
            [
                "|crate::a::b",
                "|crate::a::c",
                "|crate::a::self",
                "|crate::e",
                "|super::f",
                "|crate::h::i",
                "|self::j::K",
                "|crate::m::n",
                "inner|super",
                "|super::o::Answer",
            ]
        );
    }

    #[test]
    fn test_only_items_are_skipped() {
        let found = paths(
            "#[cfg(test)]\n#[allow(dead_code)]\nmod tests { use crate::a; fn f() { crate::b::c(); } }\n\
             #[cfg(test)] use crate::d;\n#[cfg(test)]\nmod more;\nuse crate::e;",
        );
        assert_eq!(found, ["|crate::e"]);
        assert!(scan("#[cfg(test)] mod tests;").children.is_empty());
        assert_eq!(scan("mod a; mod b {}").children, [(vec![], "a".to_owned())]);
    }

    #[test]
    fn paths_resolve_from_their_module() {
        let here = ["a".to_owned(), "b".to_owned()];
        let p = |s: &str| s.split("::").map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(absolute(&here, &p("super::c")), Some(p("a::c")));
        assert_eq!(absolute(&here, &p("super::super::d")), Some(p("d")));
        assert_eq!(absolute(&here, &p("self::e")), Some(p("a::b::e")));
        assert_eq!(absolute(&here, &p("crate::f::self")), Some(p("f")));
        assert_eq!(absolute(&here, &p("super::super::super::g")), None);
    }
}
