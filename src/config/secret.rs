//! Secrets and what messages may show of a value: [`Secret`] never prints itself, [`excerpt`]
//! cuts a value short, [`mask_url`] hides a URL's credentials.

use std::fmt;

/// A secret string whose `Debug` and `Display` never show it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    /// The secret itself, for the one place that needs it (the driver, the HTTP header).
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Whether no secret was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "(empty)"
        } else {
            "********"
        })
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The longest excerpt of a value any message shows.
const EXCERPT_CHARS: usize = 40;

/// At most [`EXCERPT_CHARS`] characters of a name.
pub(super) fn short(name: &str) -> String {
    name.chars().take(EXCERPT_CHARS).collect()
}

/// A value as messages may show it: quoted, at most [`EXCERPT_CHARS`] characters, credentials
/// in a URL masked. Secrets are never passed here.
pub fn excerpt(value: &str) -> String {
    let masked = mask_url(value);
    let mut out: String = masked.chars().take(EXCERPT_CHARS).collect();
    if masked.chars().count() > EXCERPT_CHARS {
        out.push_str("...");
    }
    format!("{out:?}")
}

/// The URL with the credentials of its authority (`user:password@`) replaced by `***@`, for
/// every place a URL is logged or shown. Text that is not such a URL comes back unchanged.
pub fn mask_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let start = scheme_end + 3;
    let authority_end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    match url[start..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..start], &url[start + at..]),
        None => url.to_string(),
    }
}
