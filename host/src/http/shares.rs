//! Fair shares of what the server holds open: no client address and no key takes more than
//! its share of the connections or streams, so one client (or one leaked key) cannot fill
//! `server.max_connections` or `server.max_streams` for everyone else.
//!
//! A share is taken when a connection is accepted or a stream opens, never per request, and
//! given back when its guard drops. The map holds one entry per current holder only, so it is
//! bounded by the connections and streams open.

use std::{
    collections::HashMap,
    hash::Hash,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use super::error::ApiError;

/// How many of something each holder has, at most `per_holder` each.
pub struct Shares<K: Eq + Hash + Clone> {
    per_holder: usize,
    /// Held only to add or take one from a holder's count.
    held: Mutex<HashMap<K, usize>>,
}

impl<K: Eq + Hash + Clone> Shares<K> {
    pub fn new(per_holder: usize) -> Arc<Shares<K>> {
        Arc::new(Shares {
            per_holder,
            held: Mutex::new(HashMap::new()),
        })
    }

    pub fn per_holder(&self) -> usize {
        self.per_holder
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<K, usize>> {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// One more for `holder`, or `None` when it already holds its share.
    pub fn try_take(self: &Arc<Self>, holder: K) -> Option<Share<K>> {
        let mut counts = self.counts();
        let count = counts.entry(holder.clone()).or_insert(0);
        if *count >= self.per_holder {
            return None;
        }
        *count += 1;
        Some(Share {
            shares: Arc::clone(self),
            holder,
        })
    }

    /// How many `holder` has now.
    #[cfg(test)]
    pub fn held_by(&self, holder: &K) -> usize {
        self.counts().get(holder).copied().unwrap_or(0)
    }
}

/// One unit of a holder's share, given back on drop.
pub struct Share<K: Eq + Hash + Clone> {
    shares: Arc<Shares<K>>,
    holder: K,
}

impl<K: Eq + Hash + Clone> Drop for Share<K> {
    fn drop(&mut self) {
        let mut counts = self.shares.counts();
        if let Some(count) = counts.get_mut(&self.holder) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.holder);
            }
        }
    }
}

/// The client address a request came from, put on each request by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub IpAddr);

/// Whose share an address uses: an IPv4 address (also written IPv4-mapped) is one holder; an
/// IPv6 address counts as its /64, which one client can fill with addresses of its own.
pub fn address_holder(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(std::net::Ipv6Addr::from(prefix))
            }
        },
    }
}

/// Who opens a stream: the key's name (if any) and the client's address (if known).
#[derive(Debug, Clone, Default)]
pub struct StreamHolder {
    pub key: Option<Arc<str>>,
    pub address: Option<IpAddr>,
}

/// The per-key and per-address shares of open streams (event streams and followed logs
/// together): `server.max_streams_per_client` each.
pub struct StreamShares {
    by_key: Arc<Shares<Arc<str>>>,
    by_address: Arc<Shares<IpAddr>>,
}

/// The shares a stream holds while it is open.
pub struct StreamGuard {
    _key: Option<Share<Arc<str>>>,
    _address: Option<Share<IpAddr>>,
}

impl StreamShares {
    pub fn new(per_client: usize) -> StreamShares {
        StreamShares {
            by_key: Shares::new(per_client),
            by_address: Shares::new(per_client),
        }
    }

    /// Takes the holder's shares, or the 503 naming which share is used up.
    pub fn take(&self, holder: &StreamHolder) -> Result<StreamGuard, ApiError> {
        let limit = self.by_key.per_holder();
        let key = match &holder.key {
            Some(key) => Some(self.by_key.try_take(Arc::clone(key)).ok_or_else(|| {
                ApiError::unavailable(
                    "too_many_streams_for_key",
                    format!(
                        "key {key:?} holds its maximum of {limit} open streams \
                         (server.max_streams_per_client); close some, or use a key per client"
                    ),
                    5,
                )
            })?),
            None => None,
        };
        let address = match holder.address {
            Some(address) => Some(
                self.by_address
                    .try_take(address_holder(address))
                    .ok_or_else(|| {
                        ApiError::unavailable(
                            "too_many_streams_for_address",
                            format!(
                                "this client address holds its maximum of {limit} open streams \
                         (server.max_streams_per_client); close some and retry"
                            ),
                            5,
                        )
                    })?,
            ),
            None => None,
        };
        Ok(StreamGuard {
            _key: key,
            _address: address,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_gets_its_share_and_no_more_and_gets_it_back() {
        let shares = Shares::<u8>::new(2);
        let first = shares.try_take(1);
        let second = shares.try_take(1);
        assert!(first.is_some() && second.is_some());
        assert!(shares.try_take(1).is_none(), "a third is over the share");
        assert!(
            shares.try_take(2).is_some(),
            "another holder has its own share"
        );
        drop(first);
        assert_eq!(shares.held_by(&1), 1);
        assert!(
            shares.try_take(1).is_some(),
            "a share given back can be taken again"
        );
        drop(second);
        assert_eq!(shares.held_by(&1), 0);
        assert!(
            shares.counts().is_empty(),
            "holders with nothing are forgotten"
        );
    }

    #[test]
    fn an_ipv6_client_is_held_by_its_slash_64() {
        let one: IpAddr = "2001:db8:1:2::5".parse().unwrap();
        let same: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::5".parse().unwrap();
        assert_eq!(address_holder(one), address_holder(same));
        assert_ne!(address_holder(one), address_holder(other));
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(address_holder(mapped), IpAddr::from([127, 0, 0, 1]));
    }

    #[test]
    fn streams_are_capped_per_key_then_per_address() {
        let shares = StreamShares::new(1);
        let address: IpAddr = [127, 0, 0, 1].into();
        let ops = StreamHolder {
            key: Some(Arc::from("ops")),
            address: Some(address),
        };
        let held = shares.take(&ops);
        assert!(held.is_ok());
        let again = shares.take(&ops).err().map(|error| error.code.to_owned());
        assert_eq!(again.as_deref(), Some("too_many_streams_for_key"));
        let other_key = StreamHolder {
            key: Some(Arc::from("dev")),
            address: Some(address),
        };
        let refused = shares
            .take(&other_key)
            .err()
            .map(|error| error.code.to_owned());
        assert_eq!(refused.as_deref(), Some("too_many_streams_for_address"));
        drop(held);
        assert!(shares.take(&other_key).is_ok());
    }
}
