//! How the shipper finds the listener's address: without a thread per request.
//!
//! ureq 3's `DefaultResolver` looks the host up on a new thread whenever a timeout applies (so
//! it can give up at the timeout), and the shipper always sets one: a thread start and a
//! `getaddrinfo` for every payload, even for an IP literal and even when the pooled connection
//! is then reused (BENCHMARKS.md, "Where the shipper's ... per payload goes"). This resolver
//! returns an IP literal as it is and keeps a name's addresses for [`KEEP_ADDRESSES`], so the
//! lookup (with ureq's own timeout thread) runs at most once a minute; a name that stops
//! resolving fails as before once its addresses are older than that.
//!
//! Invariants: the addresses are the ones `DefaultResolver` gave (same order, same IP family
//! filter), only reused; nothing here fails that the default would not.
//! (ureq's resolver API is outside its semver promise: the pinned version in Cargo.lock
//! matters.)

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// How long a name's addresses are reused before it is looked up again.
pub const KEEP_ADDRESSES: Duration = Duration::from_secs(60);

/// The shipper's resolver: IP literals as they are, names looked up at most every
/// [`KEEP_ADDRESSES`].
#[derive(Debug, Default)]
pub struct ListenerResolver {
    /// The last lookup: `host:port`, when, what it gave.
    kept: Mutex<Option<(String, Instant, ResolvedSocketAddrs)>>,
}

impl Resolver for ListenerResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        // `host:port` as ureq's own resolver forms it (the scheme's default port filled in); an
        // IP literal (`127.0.0.1:8080`, `[::1]:443`) parses as the address itself.
        let key = match (uri.scheme(), uri.authority()) {
            (Some(scheme), Some(authority)) => DefaultResolver::host_and_port(scheme, authority),
            _ => None,
        };
        let Some(key) = key else {
            return DefaultResolver::default().resolve(uri, config, timeout);
        };
        if let Ok(addr) = key.parse::<SocketAddr>() {
            let mut one = self.empty();
            one.push(addr);
            return Ok(one);
        }
        {
            let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((k, at, addrs)) = kept.as_ref() {
                if *k == key && at.elapsed() < KEEP_ADDRESSES {
                    return Ok(addrs.clone());
                }
            }
        }
        let addrs = DefaultResolver::default().resolve(uri, config, timeout)?;
        *self.kept.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((key, Instant::now(), addrs.clone()));
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(r: &ListenerResolver, url: &str) -> Vec<SocketAddr> {
        let uri: Uri = url.parse().unwrap();
        let config = Config::default();
        r.resolve(&uri, &config, NextTimeout::default())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn ip_literals_are_returned_as_they_are() {
        let r = ListenerResolver::default();
        assert_eq!(
            resolve(&r, "http://127.0.0.1:8080/ingest"),
            vec!["127.0.0.1:8080".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            resolve(&r, "https://[::1]/ingest"),
            vec!["[::1]:443".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            resolve(&r, "http://10.0.0.7/x"),
            vec!["10.0.0.7:80".parse::<SocketAddr>().unwrap()]
        );
        assert!(r.kept.lock().unwrap().is_none(), "nothing looked up");
    }

    #[test]
    fn a_name_is_looked_up_once_and_its_addresses_kept() {
        let r = ListenerResolver::default();
        let first = resolve(&r, "http://localhost:9/x");
        assert!(!first.is_empty());
        let at = r.kept.lock().unwrap().as_ref().map(|k| k.1).unwrap();
        assert_eq!(resolve(&r, "http://localhost:9/y"), first);
        assert_eq!(
            r.kept.lock().unwrap().as_ref().map(|k| k.1),
            Some(at),
            "the second call reused the first lookup"
        );
        // Another port is another key: looked up again.
        assert!(resolve(&r, "http://localhost:10/x")
            .iter()
            .all(|a| a.port() == 10));
    }
}
