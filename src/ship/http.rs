//! The one place that speaks HTTP: builds the `ureq::Agent` (timeouts, TLS roots, proxy) and
//! posts one body, returning the listener's status and answer.
//!
//! Invariants: one `Agent` per shipper, so connections are reused; certificate verification is
//! never disabled; 4xx/5xx come back as answers (not errors) with their body read to the end;
//! redirects are not followed (a POST must not silently go elsewhere: a 3xx is a configuration
//! error); the API key lives only in the `Authorization` header value and is never logged.

use std::path::Path;
use std::time::Duration;

use ureq::tls::{PemItem, RootCerts, TlsConfig};

use super::{ShipError, ShipperOptions};

/// The system CA bundle on Debian/Ubuntu/Alpine (and, via a link, most other distributions).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Idle connections older than this are not reused.
const IDLE_CONNECTION_REUSE: Duration = Duration::from_secs(4);
/// How much of a listener answer is kept (for logs and dead letters).
const MAX_ANSWER_BYTES: u64 = 64 * 1024;

/// What the listener answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// The body (at most 64 KiB, lossy UTF-8); empty when it could not be read.
    pub body: String,
    /// The raw `Retry-After` header, if any.
    pub retry_after: Option<String>,
}

/// An HTTP client bound to the listener URL and key.
pub struct Client {
    agent: ureq::Agent,
    /// The URL requests go to (it may hold credentials: never shown).
    post_url: String,
    /// The URL with its credentials masked: the only form that is logged or shown.
    shown_url: String,
    authorization: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.shown_url)
            .field("authorization", &"Bearer ***")
            .finish()
    }
}

/// Loads trust roots from a PEM file: every certificate in it, failing when there is none.
pub fn load_ca_file(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, ShipError> {
    let ca_error = |reason: String| ShipError::CaFile {
        path: path.to_path_buf(),
        reason,
    };
    let pem = crate::fsutil::read_regular_file(path, crate::fsutil::MAX_TEXT_FILE)
        .map_err(|e| ca_error(e.to_string()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            // A DER certificate is an ASN.1 SEQUENCE: anything else would be dropped silently
            // by rustls later, so it does not count.
            Ok(PemItem::Certificate(cert)) if cert.der().first() == Some(&0x30) => certs.push(cert),
            Ok(_) => {}
            Err(e) => return Err(ca_error(format!("not valid PEM: {e}"))),
        }
    }
    if certs.is_empty() {
        return Err(ca_error("no certificate found".to_string()));
    }
    Ok(certs)
}

fn tls_config(ca_file: Option<&Path>) -> Result<TlsConfig, ShipError> {
    let roots = match ca_file {
        Some(path) => {
            let certs = load_ca_file(path)?;
            log::info!(
                "trusting {} certificates from {}",
                certs.len(),
                path.display()
            );
            RootCerts::new_with_certs(&certs)
        }
        None => match load_ca_file(Path::new(SYSTEM_CA_BUNDLE)) {
            Ok(certs) => {
                log::debug!("trusting {} system certificates", certs.len());
                RootCerts::new_with_certs(&certs)
            }
            Err(e) => {
                log::debug!("{e}; using the built-in webpki roots");
                RootCerts::WebPki
            }
        },
    };
    Ok(TlsConfig::builder().root_certs(roots).build())
}

impl Client {
    /// Builds the agent: global and connect timeouts, TLS roots, proxy policy, no redirects,
    /// statuses as answers.
    pub fn new(opts: &ShipperOptions) -> Result<Client, ShipError> {
        let shown_url = crate::config::mask_url(&opts.url);
        if let Some(problem) = crate::config::listener_url_problem(&opts.url) {
            return Err(ShipError::Options(format!(
                "listener url {shown_url:?} {problem}"
            )));
        }
        let uri: ureq::http::Uri = opts
            .url
            .parse()
            .map_err(|e| ShipError::Options(format!("listener url {shown_url:?}: {e}")))?;
        if uri.host().is_none() {
            return Err(ShipError::Options(format!(
                "listener url {shown_url:?} has no host"
            )));
        }
        let authorization = format!("Bearer {}", opts.api_key);
        if ureq::http::HeaderValue::from_str(&authorization).is_err() {
            return Err(ShipError::Options(
                "api_key contains characters not allowed in an HTTP header".to_string(),
            ));
        }

        let proxy = if opts.proxy_from_env {
            ureq::Proxy::try_from_env()
        } else {
            None
        };
        if let Some(p) = &proxy {
            // Host and port only: a proxy URL may carry credentials.
            if p.is_no_proxy(&uri) {
                log::info!(
                    "proxy {}:{} from the environment is bypassed for the listener (NO_PROXY)",
                    p.host(),
                    p.port()
                );
            } else {
                log::info!(
                    "sending through proxy {}:{} from the environment",
                    p.host(),
                    p.port()
                );
            }
        }
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(opts.timeout))
            .timeout_connect(Some(opts.connect_timeout.min(opts.timeout)))
            .http_status_as_error(false)
            .max_redirects(0)
            // Reuse a connection only while the server surely still keeps it: common servers
            // close idle keep-alive connections after 5 s (Node's default), and a POST on a
            // connection closed under it fails and is not retried by ureq.
            .max_idle_age(IDLE_CONNECTION_REUSE)
            .proxy(proxy)
            .user_agent(concat!("bitville-pg-agent/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls_config(opts.ca_file.as_deref())?)
            .build();
        Ok(Client {
            // Our resolver: no lookup thread per request (`resolve`).
            agent: ureq::Agent::with_parts(
                config,
                ureq::unversioned::transport::DefaultConnector::new(),
                super::resolve::ListenerResolver::default(),
            ),
            post_url: opts.url.clone(),
            shown_url,
            authorization,
        })
    }

    /// The listener URL as it may be shown: credentials in it masked.
    pub fn url(&self) -> &str {
        &self.shown_url
    }

    /// Posts `body`; any HTTP answer is `Ok`, transport trouble is a classified `Err`.
    pub fn post(&self, body: &str) -> Result<Reply, ShipError> {
        let result = self
            .agent
            .post(&self.post_url)
            .header("Authorization", &self.authorization)
            .header("Content-Type", "application/json")
            .send(body);
        let mut resp = result.map_err(|e| self.classify(e))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(ureq::http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // Reading to the end lets the connection be reused; a failure here does not change
        // what the status already said.
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .lossy_utf8(true)
            .read_to_string()
            .unwrap_or_else(|e| {
                log::debug!("read answer from {}: {e}", self.shown_url);
                String::new()
            });
        Ok(Reply {
            status,
            body,
            retry_after,
        })
    }

    fn classify(&self, e: ureq::Error) -> ShipError {
        let url = self.shown_url.clone();
        let detail = e.to_string();
        match e {
            ureq::Error::Timeout(_) => ShipError::Timeout { url, detail },
            ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => {
                ShipError::Connect { url, detail }
            }
            ureq::Error::Tls(_) | ureq::Error::Pem(_) | ureq::Error::Rustls(_) => {
                ShipError::Tls { url, detail }
            }
            ureq::Error::Io(io) => match io.kind() {
                std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::AddrNotAvailable
                | std::io::ErrorKind::NotConnected => ShipError::Connect { url, detail },
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
                    ShipError::Timeout { url, detail }
                }
                // rustls reports handshake and certificate failures as InvalidData.
                std::io::ErrorKind::InvalidData if url.starts_with("https:") => {
                    ShipError::Tls { url, detail }
                }
                _ => ShipError::Transport { url, detail },
            },
            _ => ShipError::Transport { url, detail },
        }
    }
}

/// The connect timeout used when none is given: connecting (TCP and TLS) should never take
/// long, and a short bound makes a dead listener fail fast.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("bv-ship-http-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let path = temp_file("empty.pem", "no pem here\n");
        let err = load_ca_file(&path).unwrap_err();
        assert!(err.to_string().contains("no certificate"), "{err}");
        assert!(err.to_string().contains(&path.display().to_string()));
        let missing = load_ca_file(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(matches!(missing, ShipError::CaFile { .. }));
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_certificate_block_with_garbage_inside_does_not_count() {
        let path = temp_file(
            "garbage.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        assert!(load_ca_file(&path).is_err());
        let _ = std::fs::remove_file(path);
    }

    /// A self-signed CA certificate (P-256, valid until 2126), made once with `openssl req -x509`.
    const TEST_CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBjTCCATOgAwIBAgIUY6UfJv7+HPeu0GbEI5wfg7Qjz2QwCgYIKoZIzj0EAwIw\nGzEZMBcGA1UEAwwQYml0dmlsbGUtdGVzdC1jYTAgFw0yNjEyMDEwOTA3NTRaGA8y\nMTI2MTEwNzA5MDc1NFowGzEZMBcGA1UEAwwQYml0dmlsbGUtdGVzdC1jYTBZMBMG\nByqGSM49AgEGCCqGSM49AwEHA0IABEiedUnPQJhDGmV5dZK9Ztk0DH+U4UXyPdEz\ndsWYwFDhWrrGqi5FotvClSQKK6wgdIDtChjHq3oYXh1kpoBvFkSjUzBRMB0GA1Ud\nDgQWBBTPyFHPQcIyveSjA7JIWrq3Hg3KJjAfBgNVHSMEGDAWgBTPyFHPQcIyveSj\nA7JIWrq3Hg3KJjAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIQCV\nANDySgoEXEn/FCP46mB9owEA9EfHZNn9wTLIpT16bQIgZBiVlmmQZ1FBNwIorHVi\nk4w+VgvgfTXF0zJR+dS3rd4=\n-----END CERTIFICATE-----\n";

    #[test]
    fn a_real_certificate_counts_and_text_around_it_is_ignored() {
        let path = temp_file(
            "one-ca.pem",
            &format!("a comment line\n{TEST_CA}trailing text\n"),
        );
        assert_eq!(load_ca_file(&path).unwrap().len(), 1);
        let two = temp_file("two-ca.pem", &format!("{TEST_CA}{TEST_CA}"));
        assert_eq!(load_ca_file(&two).unwrap().len(), 2);
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(two);
    }

    #[test]
    fn bad_urls_and_keys_are_option_errors() {
        let mut o = ShipperOptions::new("ftp://x/ingest", "k", "p");
        assert!(matches!(Client::new(&o), Err(ShipError::Options(_))));
        o.url = "not a url".into();
        assert!(matches!(Client::new(&o), Err(ShipError::Options(_))));
        o.url = "http://127.0.0.1:1/ingest/postgres".into();
        o.api_key = "bad\nkey".into();
        let err = Client::new(&o).unwrap_err();
        assert!(
            !err.to_string().contains("bad\nkey"),
            "the key is never echoed"
        );
        o.api_key = "good".into();
        assert!(Client::new(&o).is_ok());
    }

    #[test]
    fn credentials_in_the_url_never_reach_errors_or_debug() {
        let mut o = ShipperOptions::new("http://bob:pw-9@127.0.0.1:1/ingest/postgres", "k", "p");
        o.proxy_from_env = false;
        o.timeout = Duration::from_secs(2);
        let client = Client::new(&o).unwrap();
        assert_eq!(client.url(), "http://***@127.0.0.1:1/ingest/postgres");
        let err = client.post("{}").unwrap_err().to_string();
        let debug = format!("{client:?}");
        assert!(
            !err.contains("pw-9") && !debug.contains("pw-9"),
            "{err} {debug}"
        );
        assert!(err.contains("***@127.0.0.1:1"), "{err}");
        o.url = "ftp://bob:pw-9@x/".into();
        assert!(!Client::new(&o).unwrap_err().to_string().contains("pw-9"));
    }
}
