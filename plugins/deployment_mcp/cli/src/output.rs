//! Printing: tables, durations, timestamps. Writes ignore errors: a closed stdout (`| head`)
//! must not abort a deployment half way, and `println!` would panic there.

use std::io::Write as _;

use deployment_mcp_core::model::Timestamp;

/// `println!` that never panics.
macro_rules! outln {
    () => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock());
    }};
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}
pub(crate) use outln;

/// `text` from a remote peer (a script's output, an error) fit for the operator's terminal:
/// escape sequences (`ESC [ 2 J`, `ESC ] 0 ; title BEL`, …) and other control characters
/// removed, tabs kept. A script's own colours go too; the CLI's are added after this.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let is_control = |c: char| (c.is_control() && c != '\t') || c == '\u{7f}';
    if !text.chars().any(is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut kept = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                // Control sequence: parameters up to a final byte in @..~.
                Some('[') => skip_control_sequence(&mut chars),
                // Strings (OSC, DCS, APC, PM, SOS): up to BEL or ESC \.
                Some(']' | 'P' | '_' | '^' | 'X') => skip_string(&mut chars),
                // Any other escape is two characters.
                _ => {}
            },
            '\u{9b}' => skip_control_sequence(&mut chars),
            '\u{9d}' | '\u{90}' | '\u{9f}' | '\u{9e}' | '\u{98}' => skip_string(&mut chars),
            c if is_control(c) => {}
            c => kept.push(c),
        }
    }
    std::borrow::Cow::Owned(kept)
}

fn skip_control_sequence(chars: &mut impl Iterator<Item = char>) {
    for c in chars.by_ref() {
        if ('@'..='~').contains(&c) {
            return;
        }
    }
}

fn skip_string(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    while let Some(c) = chars.next() {
        match c {
            '\u{7}' | '\u{9c}' => return,
            '\u{1b}' => {
                if chars.peek() == Some(&'\\') {
                    chars.next();
                }
                return;
            }
            _ => {}
        }
    }
}

/// Pretty JSON on stdout, for `--json`.
pub fn print_json<T: serde::Serialize>(value: &T) {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    outln!("{text}");
}

/// Columns padded to their widest cell; the last column is not padded.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Table {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; cells hold remote text (errors, ids), printed as [`printable`].
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(
            cells
                .into_iter()
                .map(|cell| match printable(&cell) {
                    std::borrow::Cow::Borrowed(_) => cell,
                    std::borrow::Cow::Owned(clean) => clean,
                })
                .collect(),
        );
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (index, cell) in row.iter().enumerate().take(columns) {
                widths[index] = widths[index].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let headers: Vec<String> = self.headers.iter().map(|h| (*h).to_owned()).collect();
        for row in std::iter::once(&headers).chain(self.rows.iter()) {
            let mut line = String::new();
            for (index, cell) in row.iter().enumerate().take(columns) {
                if index + 1 == columns {
                    line.push_str(cell);
                } else {
                    let pad = widths[index].saturating_sub(cell.chars().count());
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    pub fn print(&self) {
        let _ = std::io::stdout().lock().write_all(self.render().as_bytes());
    }
}

/// `850ms`, `1.2s`, `2m03s`; `-` when unknown.
pub fn duration(ms: Option<u64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) if ms < 1_000 => format!("{ms}ms"),
        Some(ms) if ms < 60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        Some(ms) => format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// The current UTC time to the second, RFC 3339.
pub fn now() -> String {
    Timestamp::now().to_second_string()
}

/// A time to the second (`…:00.123Z` → `…:00Z`).
pub fn short_time(time: &Timestamp) -> String {
    time.to_second_string()
}

/// The text, or `-` when there is none.
pub fn dash(text: Option<&str>) -> String {
    match text {
        None | Some("") => "-".into(),
        Some(text) => text.to_owned(),
    }
}

/// What a window covers or a schedule deploys: environment ids, a selector's `key=value`
/// pairs, or `neither` when there are none.
pub fn scope(
    environments: Option<&[String]>,
    selector: Option<&std::collections::BTreeMap<String, String>>,
    neither: &str,
) -> String {
    match (environments, selector) {
        (Some(list), _) => list.join(","),
        (None, Some(selector)) => selector
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect::<Vec<_>>()
            .join(","),
        (None, None) => neither.into(),
    }
}

/// Items comma-separated, or `-`.
pub fn join<T: AsRef<str>>(items: &[T]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        let items: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
        items.join(",")
    }
}

/// The ids a list entry names, and how many it leaves out of `total` (lists name only the
/// first ones of a large deployment).
pub fn listed<T: AsRef<str>>(items: &[T], total: usize) -> String {
    match total.saturating_sub(items.len()) {
        0 => join(items),
        more => format!("{} (+{more} more)", join(items)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_formats() {
        let mut table = Table::new(&["A", "LONGER", "LAST"]);
        table.row(vec!["wide-cell".into(), "x".into(), "tail text".into()]);
        assert_eq!(
            table.render(),
            "A          LONGER  LAST\nwide-cell  x       tail text\n"
        );
        assert_eq!(printable("plain\ttext"), "plain\ttext");
        assert_eq!(
            printable("\u{1b}]0;owned title\u{7}before\u{1b}[2Jafter\u{1b}[1;31mred\u{1b}[0m"),
            "beforeafterred"
        );
        assert_eq!(
            printable("a\u{1b}]8;;http://x\u{1b}\\link\u{1b}]8;;\u{1b}\\b"),
            "alinkb"
        );
        assert_eq!(
            printable("bell\u{7} back\u{8}space \u{9b}2Jc1 \u{1b}cRIS"),
            "bell backspace c1 RIS"
        );
        let ids = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(listed(&ids, 2), "a,b");
        assert_eq!(listed(&ids, 10_000), "a,b (+9998 more)");
        assert_eq!(listed::<String>(&[], 0), "-");
        assert_eq!(duration(Some(850)), "850ms");
        assert_eq!(duration(Some(1_240)), "1.2s");
        assert_eq!(duration(Some(123_000)), "2m03s");
        assert_eq!(
            short_time(&"2026-11-25T11:00:00.123Z".parse().unwrap()),
            "2026-11-25T11:00:00Z"
        );
    }
}
