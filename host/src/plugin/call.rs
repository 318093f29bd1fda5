//! One call of a plugin copy, as the host makes it whichever way the copy runs: the request in
//! host types ([`HostRequest`]) and in ABI types ([`export_request`], for a library loaded in
//! this process or by a child), and why a call may end without an answer ([`CallError`], with
//! the [`Death`] of a child process).
//!
//! Its own module because both ways of running a copy use it: [`copy`](super::copy) picks one,
//! [`process`](super::process) is one, and neither should need the other for these types.

use std::os::unix::process::ExitStatusExt as _;

use abi_stable::std_types::{ROption, RString, RVec, Tuple2};
use axum::body::Bytes;
use plugin_api::{PluginRequest, Principal as AbiPrincipal, Role};

/// A request for a plugin, owned by the host.
#[derive(Debug)]
pub struct HostRequest {
    pub request_id: String,
    pub method: String,
    /// Relative to the plugin's mount, starting with `/`.
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub principal: Option<(String, Role)>,
}

/// Why a request got no answer from the plugin.
#[derive(Debug, Clone)]
pub enum CallError {
    /// The plugin dropped the request without answering.
    Unanswered,
    /// The copy's process ended while the request was in flight (or before it was sent).
    Crashed { plugin: String, death: Death },
}

/// How a child process ended.
#[derive(Debug, Clone)]
pub struct Death {
    /// For people: "killed by signal SIGSEGV", "exited with status 3".
    pub cause: String,
    pub signal: Option<&'static str>,
    pub exit_code: Option<i32>,
}

impl Death {
    /// How a reaped child ended, from its exit status.
    pub(super) fn from_status(status: std::process::ExitStatus) -> Death {
        if let Some(number) = status.signal() {
            let signal = nix::sys::signal::Signal::try_from(number)
                .ok()
                .map(|signal| signal.as_str());
            let cause = match signal {
                Some(name) => format!("killed by signal {name}"),
                None => format!("killed by signal {number}"),
            };
            return Death {
                cause,
                signal,
                exit_code: None,
            };
        }
        let code = status.code();
        Death {
            cause: match code {
                Some(code) => format!("exited with status {code}"),
                None => "exited".to_owned(),
            },
            signal: None,
            exit_code: code,
        }
    }

    /// An end that no exit status describes (its cause is all there is).
    pub fn lost(reason: String) -> Death {
        Death {
            cause: reason,
            signal: None,
            exit_code: None,
        }
    }
}

/// The request in ABI types, for a copy in this process (or loaded by a child process).
pub fn export_request(request: HostRequest) -> PluginRequest {
    PluginRequest {
        request_id: RString::from(request.request_id),
        method: RString::from(request.method),
        path: RString::from(request.path),
        query: RString::from(request.query),
        headers: request
            .headers
            .into_iter()
            .map(|(name, value)| Tuple2(RString::from(name), RString::from(value)))
            .collect::<RVec<_>>(),
        body: RVec::from(Vec::from(request.body)),
        principal: match request.principal {
            Some((name, role)) => ROption::RSome(AbiPrincipal {
                name: RString::from(name),
                role,
            }),
            None => ROption::RNone,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_death_names_the_signal_or_the_status() {
        let killed = Death::from_status(std::process::ExitStatus::from_raw(11));
        assert_eq!(killed.signal, Some("SIGSEGV"));
        assert_eq!(killed.cause, "killed by signal SIGSEGV");
        assert_eq!(killed.exit_code, None);
        let exited = Death::from_status(std::process::ExitStatus::from_raw(3 << 8));
        assert_eq!((exited.signal, exited.exit_code), (None, Some(3)));
        assert_eq!(exited.cause, "exited with status 3");
    }
}
