//! Secrets that travel inside URLs: `http://user:password@host/hook?token=…`. Every URL this
//! plugin shows (API views, the dashboard, events, log lines, error messages, the host log)
//! goes through [`url`] first, so a password written into a webhook URL is used to connect and
//! never displayed. And secrets a trigger knows (an environment's `api_token`,
//! `webhook_secret`): [`Secrets`] masks them wherever a script or a peer prints them back.

use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};

/// Query parameters whose values are credentials (compared case-insensitively, as substrings:
/// `access_token`, `X-Api-Key`, `sig`…).
const SECRET_PARAMETERS: &[&str] = &[
    "token",
    "secret",
    "password",
    "passwd",
    "key",
    "signature",
    "sig",
    "auth",
    "credential",
];

/// What replaces a secret.
pub const MASK: &str = "***";

/// Shorter values are not masked: they would mask ordinary words and numbers of every line.
pub const MIN_MASKED_LEN: usize = 4;

/// Known secret values, masked as `***` wherever they appear in a line (like a CI system masks
/// its secrets): one pass over the text whatever their number, so a deployment can mask every
/// secret of a large catalog in each line. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Secrets(Option<Arc<Matcher>>);

#[derive(Debug)]
enum Matcher {
    Automaton(AhoCorasick),
    /// Where the automaton would exceed its size limits: one search per secret, longest first.
    EachOf(Vec<String>),
}

impl Secrets {
    /// These values, the empty and the too short ones left out. A secret that contains another
    /// is masked whole.
    pub fn new(values: impl IntoIterator<Item = String>) -> Secrets {
        let mut values: Vec<String> = values
            .into_iter()
            .filter(|value| value.len() >= MIN_MASKED_LEN)
            .collect();
        if values.is_empty() {
            return Secrets(None);
        }
        let matcher = match AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&values)
        {
            Ok(automaton) => Matcher::Automaton(automaton),
            Err(_) => {
                values.sort_by_key(|value| std::cmp::Reverse(value.len()));
                Matcher::EachOf(values)
            }
        };
        Secrets(Some(Arc::new(matcher)))
    }

    /// `text` with every secret replaced by `***`.
    pub fn mask(&self, text: &str) -> String {
        let mut masked = text.to_owned();
        self.mask_in_place(&mut masked);
        masked
    }

    /// Replaces every secret in `text` by `***` (a text without one is left as it is).
    pub fn mask_in_place(&self, text: &mut String) {
        match self.0.as_deref() {
            None => {}
            Some(Matcher::Automaton(automaton)) if automaton.is_match(text.as_str()) => {
                let mut masked = String::with_capacity(text.len());
                automaton.replace_all_with(text, &mut masked, |_, _, out| {
                    out.push_str(MASK);
                    true
                });
                *text = masked;
            }
            Some(Matcher::Automaton(_)) => {}
            Some(Matcher::EachOf(values)) => {
                for secret in values {
                    if text.contains(secret.as_str()) {
                        *text = text.replace(secret.as_str(), MASK);
                    }
                }
            }
        }
    }
}

fn is_secret_parameter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_PARAMETERS.iter().any(|word| name.contains(word))
}

/// `text` as a URL fit to show: userinfo and secret query values replaced by `***`. Text that
/// does not parse as a URL is shown as is only when it cannot carry userinfo (no `@`).
pub fn url(text: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(text) else {
        return if text.contains('@') {
            "<unparseable URL>".to_owned()
        } else {
            text.to_owned()
        };
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        // Only fails for URLs that cannot have userinfo, which these do.
        let _ = parsed.set_password(None);
        let _ = parsed.set_username(MASK);
    }
    if parsed.query().is_some() {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(name, value)| {
                let value = if is_secret_parameter(&name) {
                    MASK.to_owned()
                } else {
                    value.into_owned()
                };
                (name.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    let path = parsed.path();
    if path.split('/').any(is_secret_segment) {
        let masked: Vec<&str> = path
            .split('/')
            .map(|segment| {
                if is_secret_segment(segment) {
                    MASK
                } else {
                    segment
                }
            })
            .collect();
        parsed.set_path(&masked.join("/"));
    }
    parsed.to_string()
}

/// Shortest path segment taken for a token.
const MIN_TOKEN_SEGMENT: usize = 20;

/// A path segment that looks like a credential: chat-style webhook URLs carry their token in
/// the path (`/services/T0/B0/<token>`, `/api/webhooks/<id>/<token>`). At least
/// [`MIN_TOKEN_SEGMENT`] letters, digits, `-` or `_`, letters and digits mixed.
fn is_secret_segment(segment: &str) -> bool {
    segment.len() >= MIN_TOKEN_SEGMENT
        && segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && segment.chars().any(|c| c.is_ascii_digit())
        && segment.chars().any(|c| c.is_ascii_alphabetic())
}

/// Replaces every URL found in free text (an error message, a log line) by its redacted form.
pub fn urls_in(text: &str) -> String {
    if !text.contains("://") {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        // The scheme: letters (and + - .) right before "://".
        let start = rest[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || "+-.".contains(c)))
            .map_or(0, |i| i + 1);
        let end = rest[at..]
            .find(|c: char| c.is_whitespace() || "\"'<>()[]{}`,;".contains(c))
            .map_or(rest.len(), |i| at + i);
        out.push_str(&rest[..start]);
        out.push_str(&url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_secrets_are_masked_whole_and_short_values_left() {
        let secrets = Secrets::new([
            "tok-123".to_owned(),
            "tok-123-long".to_owned(),
            "abc".to_owned(),
            String::new(),
        ]);
        assert_eq!(
            secrets.mask("token tok-123-long then tok-123, abc"),
            "token *** then ***, abc"
        );
        assert_eq!(Secrets::default().mask("tok-123"), "tok-123");
    }

    #[test]
    fn userinfo_and_secret_parameters_are_masked() {
        assert_eq!(
            url("http://user:pa55@hooks.test:8080/deploy?team=ops&token=abc&Api_Key=z"),
            "http://***@hooks.test:8080/deploy?team=ops&token=***&Api_Key=***"
        );
        assert_eq!(url("https://hooks.test/x"), "https://hooks.test/x");
        assert_eq!(url("http://only-user@h.test/"), "http://***@h.test/");
        assert_eq!(url("not a url"), "not a url");
        assert_eq!(url("http://user:pw@[broken/x"), "<unparseable URL>");
    }

    #[test]
    fn tokens_in_a_path_are_masked_and_ordinary_segments_kept() {
        assert_eq!(
            url("https://hooks.chat.test/services/T0A1B2C3D/B0A1B2C3D/q8Zx4Kp2Lm7Nw3Rt9Vy6Bc1D"),
            "https://hooks.chat.test/services/T0A1B2C3D/B0A1B2C3D/***"
        );
        assert_eq!(
            url("https://chat.test/api/webhooks/112233445566778899/Ab3_dE4-fG5hI6jK7lM8nO9pQ0rS1tU2vW3xY4z"),
            "https://chat.test/api/webhooks/112233445566778899/***"
        );
        for kept in [
            "http://127.0.0.1:8080/webhook/deploy",
            "http://127.0.0.1:8080/api/v1/health-check-endpoint",
            "http://h.test/releases/2026-12-05/build-42",
        ] {
            assert_eq!(url(kept), kept);
        }
        assert!(
            !urls_in("posting to https://h.test/hooks/q8Zx4Kp2Lm7Nw3Rt9Vy6Bc1D failed")
                .contains("q8Zx4Kp2")
        );
    }

    #[test]
    fn urls_inside_text_are_masked() {
        let message = "error sending request for url (http://u:secret@127.0.0.1:9/hook): refused";
        let shown = urls_in(message);
        assert!(!shown.contains("secret"), "{shown}");
        assert_eq!(
            shown,
            "error sending request for url (http://***@127.0.0.1:9/hook): refused"
        );
        assert_eq!(urls_in("no links here"), "no links here");
    }
}
