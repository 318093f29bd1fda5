//! Secrets that travel inside URLs: `http://user:password@host/hook?token=…`. Every URL this
//! plugin shows (API views, the dashboard, events, log lines, error messages, the host log)
//! goes through [`url`] first, so a password written into a webhook URL is used to connect and
//! never displayed.

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
    parsed.to_string()
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
