//! Every outbound connection to a target: triggers, health checks, and the redirects they
//! follow. `allowed_target_networks` confines them to the operator's networks, so an
//! environment created with any host cannot make this machine reach anywhere else (SSRF).
//!
//! The check is made on the addresses a name resolves to, not on the name: the HTTP client's
//! resolver keeps only allowed addresses (and connects to nothing when none is), so a name that
//! resolves elsewhere, a redirect to another host, or DNS that changes between two lookups
//! reaches no refused address. URLs whose host is an address skip resolution, so they are
//! checked before the request and on every redirect. SSH connects through [`Egress::connect`].

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use ipnet::IpNet;
use serde::Deserialize;

/// The setting's name, as every refusal names it.
pub const SETTING: &str = "allowed_target_networks";

/// At most this many redirects are followed (reqwest's own default).
const MAX_REDIRECTS: usize = 10;

/// `allowed_target_networks`: the networks outbound calls may reach; empty allows any.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Vec<String>")]
pub struct TargetNetworks(Vec<IpNet>);

impl TryFrom<Vec<String>> for TargetNetworks {
    type Error = String;

    fn try_from(entries: Vec<String>) -> Result<TargetNetworks, String> {
        entries
            .iter()
            .enumerate()
            .map(|(index, entry)| {
                let text = entry.trim();
                IpNet::from_str(text)
                    .or_else(|_| IpAddr::from_str(text).map(IpNet::from))
                    .map_err(|_| {
                        format!(
                            "{SETTING}[{index}]: {entry:?} is not a network; expected an address \
                             or a CIDR network such as \"10.0.0.0/8\", \"192.168.1.5\" or \"::1/128\""
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(TargetNetworks)
    }
}

impl TargetNetworks {
    /// Whether any address is allowed (the setting is empty).
    pub fn is_unrestricted(&self) -> bool {
        self.0.is_empty()
    }

    pub fn allows(&self, address: IpAddr) -> bool {
        // An IPv4 address reached over IPv6 (`::ffff:a.b.c.d`) is that IPv4 address.
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
            IpAddr::V4(_) => address,
        };
        self.is_unrestricted() || self.0.iter().any(|network| network.contains(&address))
    }

    /// `Ok` when `address` is allowed, else the refusal that names the setting.
    pub fn check(&self, address: IpAddr) -> Result<(), Refused> {
        if self.allows(address) {
            Ok(())
        } else {
            Err(Refused {
                address,
                networks: self.to_string(),
            })
        }
    }

    /// The check for a URL whose host is an address; names are checked when resolved.
    fn check_url(&self, url: &url::Url) -> Result<(), Refused> {
        match url.host() {
            Some(url::Host::Ipv4(address)) => self.check(IpAddr::V4(address)),
            Some(url::Host::Ipv6(address)) => self.check(IpAddr::V6(address)),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for TargetNetworks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self.0.iter().map(IpNet::to_string).collect();
        write!(f, "{}", list.join(", "))
    }
}

/// An outbound call to an address outside `allowed_target_networks`: nothing was sent to it.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "{address} is outside {SETTING} ({networks}); nothing was sent to it. \
     Add its network to [plugins.deployment_mcp.settings] {SETTING} to allow it"
)]
pub struct Refused {
    address: IpAddr,
    networks: String,
}

impl Refused {
    /// The refusal somewhere in an error's chain of causes (the HTTP client wraps it).
    pub fn in_chain<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
        let mut current = Some(error);
        while let Some(error) = current {
            if let Some(refused) = error.downcast_ref::<Refused>() {
                return Some(refused);
            }
            current = error.source();
        }
        None
    }
}

/// Why [`Egress::connect`] has no connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
    #[error("cannot resolve {host}: {error}")]
    Resolve { host: String, error: std::io::Error },
    #[error("{0}")]
    Connect(std::io::Error),
}

/// The way out: one pooled HTTP client (rustls) whose every connection is checked, and TCP
/// connections for SSH checked the same way. Cheap to clone.
#[derive(Clone)]
pub struct Egress {
    http: reqwest::Client,
    /// The same, following no redirect (notifications: a receiver answers where it is asked).
    http_once: reqwest::Client,
    networks: Arc<TargetNetworks>,
}

impl Egress {
    pub fn new(networks: TargetNetworks) -> Result<Egress, String> {
        let networks = Arc::new(networks);
        let client = |redirect: reqwest::redirect::Policy| {
            let mut builder = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .user_agent(concat!(
                    "powerautomation-deployment_mcp/",
                    env!("CARGO_PKG_VERSION")
                ))
                .dns_resolver(Arc::new(CheckedResolver {
                    networks: Arc::clone(&networks),
                }))
                .redirect(redirect);
            if !networks.is_unrestricted() {
                // A proxy would be the only address checked, and it may reach anywhere.
                builder = builder.no_proxy();
            }
            builder
                .build()
                .map_err(|error| format!("cannot build the HTTP client: {error}"))
        };
        let http = client(redirect_policy(Arc::clone(&networks)))?;
        let http_once = client(reqwest::redirect::Policy::none())?;
        Ok(Egress {
            http,
            http_once,
            networks,
        })
    }

    pub fn networks(&self) -> &TargetNetworks {
        &self.networks
    }

    /// A `GET` of `url`, or the refusal when its host is an address outside the networks.
    pub fn get(&self, url: &url::Url) -> Result<reqwest::RequestBuilder, Refused> {
        self.networks.check_url(url)?;
        Ok(self.http.get(url.clone()))
    }

    /// A `POST` to `url`, checked like [`Egress::get`].
    pub fn post(&self, url: &url::Url) -> Result<reqwest::RequestBuilder, Refused> {
        self.networks.check_url(url)?;
        Ok(self.http.post(url.clone()))
    }

    /// A `POST` to `url` that follows no redirect (a 3xx is the answer), checked like
    /// [`Egress::get`].
    pub fn post_once(&self, url: &url::Url) -> Result<reqwest::RequestBuilder, Refused> {
        self.networks.check_url(url)?;
        Ok(self.http_once.post(url.clone()))
    }

    /// A TCP connection to `host:port`: resolved, then tried on each allowed address in turn.
    /// When every address is outside the networks, nothing is attempted.
    pub async fn connect(
        &self,
        host: &str,
        port: u16,
    ) -> Result<tokio::net::TcpStream, ConnectError> {
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|error| ConnectError::Resolve {
                host: host.to_owned(),
                error,
            })?
            .collect();
        let mut refused = None;
        let mut last_error = None;
        for address in addresses {
            if let Err(refusal) = self.networks.check(address.ip()) {
                refused.get_or_insert(refusal);
                continue;
            }
            match tokio::net::TcpStream::connect(address).await {
                Ok(stream) => return Ok(stream),
                Err(error) => last_error = Some(error),
            }
        }
        match (last_error, refused) {
            (Some(error), _) => Err(ConnectError::Connect(error)),
            (None, Some(refusal)) => Err(ConnectError::Refused(refusal)),
            (None, None) => Err(ConnectError::NoAddress {
                host: host.to_owned(),
            }),
        }
    }
}

/// Follows up to [`MAX_REDIRECTS`] redirects, refusing one to an address outside the networks
/// (a name is checked by the resolver when it is connected to).
fn redirect_policy(networks: Arc<TargetNetworks>) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > MAX_REDIRECTS {
            let error = format!("more than {MAX_REDIRECTS} redirects");
            return attempt.error(error);
        }
        match networks.check_url(attempt.url()) {
            Ok(()) => attempt.follow(),
            Err(refused) => attempt.error(refused),
        }
    })
}

/// The system resolver, keeping only the addresses the networks allow.
struct CheckedResolver {
    networks: Arc<TargetNetworks>,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let networks = Arc::clone(&self.networks);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|address| match networks.check(address.ip()) {
                    Ok(()) => true,
                    Err(refusal) => {
                        refused.get_or_insert(refusal);
                        false
                    }
                })
                .collect();
            match refused {
                Some(refusal) if allowed.is_empty() => Err(Box::new(refusal) as _),
                _ => Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn networks(list: &[&str]) -> Result<TargetNetworks, String> {
        TargetNetworks::try_from(
            list.iter()
                .map(|entry| entry.to_string())
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn an_empty_list_allows_every_address() {
        let any = networks(&[]).unwrap();
        assert!(any.allows("203.0.113.7".parse().unwrap()));
        assert!(any.allows("::1".parse().unwrap()));
    }

    #[test]
    fn addresses_are_checked_against_each_network() {
        let list = networks(&["127.0.0.2", "10.0.0.0/8", "fd00::/8"]).unwrap();
        assert!(list.allows("127.0.0.2".parse().unwrap()));
        assert!(!list.allows("127.0.0.1".parse().unwrap()));
        assert!(list.allows("10.200.3.4".parse().unwrap()));
        assert!(!list.allows("11.0.0.1".parse().unwrap()));
        assert!(list.allows("fd12::1".parse().unwrap()));
        assert!(!list.allows("::1".parse().unwrap()));
        // The IPv4-mapped form of an address is that address.
        assert!(list.allows("::ffff:10.1.1.1".parse().unwrap()));
        assert!(!list.allows("::ffff:127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn a_bad_entry_is_named_with_its_position() {
        let error = networks(&["127.0.0.0/8", "10.0.0.0/33"]).unwrap_err();
        assert!(
            error.starts_with("allowed_target_networks[1]: \"10.0.0.0/33\""),
            "{error}"
        );
        assert!(networks(&["example.com"]).is_err());
    }

    #[test]
    fn a_refusal_names_the_setting_and_the_address() {
        let list = networks(&["127.0.0.2/32"]).unwrap();
        let refusal = list
            .check("127.0.0.1".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            refusal.contains("127.0.0.1 is outside allowed_target_networks (127.0.0.2/32)"),
            "{refusal}"
        );
        let url = url::Url::parse("http://127.0.0.1:9/x").unwrap();
        assert!(list.check_url(&url).is_err());
        let named = url::Url::parse("http://localhost:9/x").unwrap();
        assert!(
            list.check_url(&named).is_ok(),
            "names are checked when resolved"
        );
    }
}
