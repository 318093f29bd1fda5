//! Which browser origins may call the MCP endpoint: a page of another origin gets 403 before its
//! key is even looked at (the MCP specification asks servers to check `Origin`, against DNS
//! rebinding). Loopback origins are always accepted; `mcp.allowed_origins` adds others.

/// Browser origins the endpoint accepts: `scheme://host` with `:port`, `:*` (any port), or no
/// port (the scheme's default).
#[derive(Debug, Clone)]
pub struct OriginRule {
    scheme: String,
    host: String,
    /// `None`: any port.
    port: Option<u16>,
}

impl OriginRule {
    /// The loopback origins, always accepted.
    pub fn loopback() -> Vec<OriginRule> {
        ["http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*"]
            .iter()
            .filter_map(|rule| OriginRule::parse(rule).ok())
            .collect()
    }

    pub fn parse(text: &str) -> Result<OriginRule, String> {
        let (text, any_port) = match text.strip_suffix(":*") {
            Some(rest) => (rest, true),
            None => (text, false),
        };
        let url = url::Url::parse(text).map_err(|error| {
            format!("{text:?} is not an origin like https://ops.example.com:443 ({error})")
        })?;
        let host = url
            .host_str()
            .filter(|_| url.path() == "/" && url.query().is_none())
            .ok_or_else(|| format!("{text:?} is not an origin: scheme://host[:port], no path"))?;
        Ok(OriginRule {
            scheme: url.scheme().to_owned(),
            host: host.to_ascii_lowercase(),
            port: if any_port {
                None
            } else {
                url.port_or_known_default()
            },
        })
    }

    fn allows(&self, origin: &url::Url) -> bool {
        origin.scheme() == self.scheme
            && origin.host_str().map(str::to_ascii_lowercase).as_deref() == Some(self.host.as_str())
            && self
                .port
                .is_none_or(|port| origin.port_or_known_default() == Some(port))
    }
}

/// Whether a request's `Origin` header is acceptable: absent (not a browser), or matching a
/// rule. `null` and unparsable origins are refused.
pub fn origin_allowed(origin: Option<&str>, rules: &[OriginRule]) -> bool {
    let Some(origin) = origin else { return true };
    match url::Url::parse(origin) {
        Ok(origin) => rules.iter().any(|rule| rule.allows(&origin)),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_match_scheme_host_and_port() {
        let rules: Vec<OriginRule> = OriginRule::loopback()
            .into_iter()
            .chain(OriginRule::parse("https://ops.example.com"))
            .collect();
        let allowed = |origin| origin_allowed(Some(origin), &rules);
        assert!(origin_allowed(None, &rules), "no Origin: not a browser");
        assert!(allowed("http://127.0.0.1:8080") && allowed("http://localhost:3000"));
        assert!(allowed("https://ops.example.com") && allowed("https://ops.example.com:443"));
        assert!(!allowed("https://ops.example.com:8443"), "another port");
        assert!(!allowed("http://ops.example.com"), "another scheme");
        assert!(!allowed("http://127.0.0.1.evil.test") && !allowed("null"));
        assert!(
            OriginRule::parse("ops.example.com").is_err(),
            "a scheme is needed"
        );
        assert!(OriginRule::parse("https://ops.example.com/path").is_err());
    }
}
