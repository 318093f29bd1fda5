//! Blanking of comments and literals, so that the scanners see only code: a path in a doc
//! comment or a string is no import, and a collection name in a comment is no store access.
//! Everything blanked becomes spaces with its newlines kept, so line numbers stay true.

/// A source with its comments blanked (nested block comments included).
pub struct Stripped {
    /// String and character literals blanked too.
    pub code: String,
    /// String literals kept (character literals blanked).
    pub with_strings: String,
}

/// Blanks comments and literals; see [`Stripped`].
pub fn strip(source: &str) -> Stripped {
    let chars: Vec<char> = source.chars().collect();
    let mut code = String::with_capacity(source.len());
    let mut with_strings = String::with_capacity(source.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < chars.len() {
        match literal_or_comment(&chars, i) {
            Some((end, keep)) => {
                for &c in &chars[i..end] {
                    code.push(blank(c));
                    with_strings.push(if keep { c } else { blank(c) });
                }
                i = end;
            }
            None => {
                code.push(chars[i]);
                with_strings.push(chars[i]);
                i += 1;
            }
        }
    }
    Stripped { code, with_strings }
}

/// The comment or literal starting at `i`, if one does: where it ends, and whether it is a
/// string literal.
fn literal_or_comment(chars: &[char], i: usize) -> Option<(usize, bool)> {
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    let c = chars[i];
    let ident_before = i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
    if c == '/' && at(i + 1) == '/' {
        let mut j = i;
        while j < chars.len() && chars[j] != '\n' {
            j += 1;
        }
        Some((j, false))
    } else if c == '/' && at(i + 1) == '*' {
        let (mut j, mut depth) = (i + 2, 1);
        while j < chars.len() && depth > 0 {
            if chars[j] == '/' && at(j + 1) == '*' {
                depth += 1;
                j += 2;
            } else if chars[j] == '*' && at(j + 1) == '/' {
                depth -= 1;
                j += 2;
            } else {
                j += 1;
            }
        }
        Some((j.min(chars.len()), false))
    } else if !ident_before && (c == 'r' || (c == 'b' && at(i + 1) == 'r')) {
        raw_string_end(chars, i + if c == 'b' { 2 } else { 1 }).map(|end| (end, true))
    } else if c == '"' || (!ident_before && c == 'b' && at(i + 1) == '"') {
        let mut j = i + if c == 'b' { 2 } else { 1 };
        while j < chars.len() {
            match chars[j] {
                '\\' => j += 2,
                '"' => {
                    j += 1;
                    break;
                }
                _ => j += 1,
            }
        }
        Some((j.min(chars.len()), true))
    } else if c == '\'' && at(i + 1) == '\\' {
        // An escaped character: `'\n'`, `'\''`, `'\u{7f}'`.
        let mut j = i + 3;
        while j < chars.len() && chars[j] != '\'' && chars[j] != '\n' {
            j += 1;
        }
        Some(((j + 1).min(chars.len()), false))
    } else if c == '\'' && at(i + 2) == '\'' {
        Some((i + 3, false))
    } else {
        // Anything else, a lifetime or a label included, is code.
        None
    }
}

/// Where a raw string whose `#`s start at `from` ends, if one starts there.
fn raw_string_end(chars: &[char], from: usize) -> Option<usize> {
    let mut j = from;
    while chars.get(j) == Some(&'#') {
        j += 1;
    }
    let hashes = j - from;
    if chars.get(j) != Some(&'"') {
        return None;
    }
    j += 1;
    while j < chars.len() {
        if chars[j] == '"' && (1..=hashes).all(|k| chars.get(j + k) == Some(&'#')) {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(chars.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_and_literals_are_blanked_keeping_lines() {
        let source = "a // crate::x\n/* crate::y /* nested */ */ b \"crate::z\" r#\"crate::w\"# \
                      'c' '\\'' 'a br\"crate::v\" r#type\n";
        let stripped = strip(source);
        assert_eq!(stripped.code.lines().count(), source.lines().count());
        assert!(!stripped.code.contains("crate"), "{}", stripped.code);
        assert!(stripped.code.contains("'a"), "a lifetime is code");
        assert!(stripped.code.contains("r#type"), "a raw identifier is code");
        assert!(stripped.with_strings.contains("\"crate::z\""));
        assert!(stripped.with_strings.contains("r#\"crate::w\"#"));
        assert!(!stripped.with_strings.contains("nested"));
        assert!(!stripped.with_strings.contains("'c'"));
    }

    #[test]
    fn escapes_do_not_end_a_string() {
        let stripped = strip(r#"x("a\"b // c", crate::d)"#);
        assert!(stripped.code.contains("crate::d"), "{}", stripped.code);
        assert!(!stripped.code.contains("c\""));
    }
}
