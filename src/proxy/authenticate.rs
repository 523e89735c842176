//! Who is calling: a client key (Basic password or user name, or Bearer), compared in constant time
//! against every configured key hash, or a keyless client's OIDC token in the same places
//! (see `issuers::verify`); or, in open mode, anyone on this machine who is not a web page. Keys
//! and tokens are never kept, logged or echoed; only their hashes are compared or remembered.

use std::sync::Arc;

use base64::Engine as _;
use http::{HeaderMap, HeaderValue, header};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::error::{Rejection, Unauthenticated};
use crate::issuers::IssuerKeys;
use crate::issuers::verify::{MAX_TOKEN_BYTES, TokenClients, Verdict};
use crate::keys;

/// Longer `Authorization` values are neither keys (a key is 47 characters) nor tokens (see
/// `MAX_TOKEN_BYTES`, in Basic's base64 with a user name); refusing them bounds the work an
/// anonymous caller can cause.
const MAX_AUTHORIZATION_BYTES: usize = MAX_TOKEN_BYTES * 4 / 3 + 512;

/// Parsed once: looking a header up by `&str` parses the name on every request.
static SEC_FETCH_SITE: header::HeaderName = header::HeaderName::from_static("sec-fetch-site");
const MAX_KEY_BYTES: usize = 256;

/// Who a request may come from, as configured.
pub enum Inbound {
    /// The SHA-256 of each key client's key with the client's index among the snapshot's
    /// clients, and the keyless clients.
    Keys {
        key_hashes: Box<[([u8; 32], usize)]>,
        tokens: Option<TokenClients>,
    },
    /// No key: every local caller acts as the one open-mode client, but only with one of the
    /// listener's own host names, so a DNS-rebinding web page cannot reach it.
    Open { hosts: Box<[HeaderValue]> },
}

/// Who is calling, or what must happen before that is known.
pub enum Caller {
    /// The index of the calling client among the snapshot's clients.
    Client(usize),
    /// A token names a key its issuer has not shown yet: ask again once the keys are fetched.
    AwaitKeys(Arc<IssuerKeys>),
}

impl Inbound {
    /// `patient`: a token naming an unknown key may wait for its issuer's keys (see [`Caller`]).
    /// `pat` is set when the credential looks like an Azure DevOps PAT, accepted or not: teams
    /// retiring PATs count which tools still send one (never what it is).
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        patient: bool,
        pat: &mut bool,
    ) -> Result<Caller, Rejection> {
        // Browsers mark cross-site and page-initiated requests; git, curl and the SDKs send
        // neither header. Refused in both modes: a browser may hold a key typed into its prompt.
        if from_browser(headers) {
            return Err(Rejection::BrowserRequest);
        }
        match self {
            Inbound::Keys { key_hashes, tokens } => {
                find_client(key_hashes, tokens.as_ref(), headers, patient, pat)
                    .map_err(Rejection::Unauthenticated)
            }
            Inbound::Open { hosts } => {
                let host = headers.get(header::HOST);
                if host.is_some_and(|host| {
                    hosts
                        .iter()
                        .any(|own| own.as_bytes().eq_ignore_ascii_case(host.as_bytes()))
                }) {
                    Ok(Caller::Client(0))
                } else {
                    Err(Rejection::ForeignHost)
                }
            }
        }
    }
}

/// `Origin`, or a `Sec-Fetch-Site` other than `none`. One pass over the names rather than two
/// lookups: requests have a handful of headers, and hashing a name costs more than comparing it.
fn from_browser(headers: &HeaderMap) -> bool {
    headers.iter().any(|(name, value)| {
        name == header::ORIGIN || (name == SEC_FETCH_SITE && value.as_bytes() != b"none")
    })
}

fn find_client(
    key_hashes: &[([u8; 32], usize)],
    tokens: Option<&TokenClients>,
    headers: &HeaderMap,
    patient: bool,
    pat: &mut bool,
) -> Result<Caller, Unauthenticated> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or(Unauthenticated::Missing)?;
    if values.next().is_some() || value.len() > MAX_AUTHORIZATION_BYTES {
        return Err(Unauthenticated::Malformed);
    }
    // A token's own limit is checked where it is verified, with a reason of its own.
    let longest = if tokens.is_some() {
        MAX_AUTHORIZATION_BYTES
    } else {
        MAX_KEY_BYTES
    };
    with_presented_credential(value.as_bytes(), longest, |credential| {
        *pat = looks_like_pat(credential);
        if credential.len() <= MAX_KEY_BYTES
            && let Some(found) = key_client(key_hashes, &keys::sha256(credential))
        {
            return Ok(Caller::Client(found));
        }
        match tokens {
            Some(tokens) if looks_like_jwt(credential) => {
                match tokens.verify(credential, patient) {
                    Verdict::Client(index) => Ok(Caller::Client(index)),
                    Verdict::AwaitKeys(keys) => Ok(Caller::AwaitKeys(keys)),
                    Verdict::Refused(why) => {
                        // The reason, never the token: the operator's answer to "why 401?".
                        tracing::info!(reason = why.label(), "client token refused");
                        Err(why)
                    }
                }
            }
            _ if credential.len() > MAX_KEY_BYTES => Err(Unauthenticated::Malformed),
            _ => Err(Unauthenticated::Unknown),
        }
    })
    .ok_or(Unauthenticated::Malformed)?
}

/// One full pass over every key client, whatever matches, with constant-time comparisons.
fn key_client(key_hashes: &[([u8; 32], usize)], hash: &[u8; 32]) -> Option<usize> {
    let mut found = u32::MAX;
    for (key_sha256, index) in key_hashes {
        let index = u32::try_from(*index).unwrap_or(u32::MAX);
        found = u32::conditional_select(&found, &index, key_sha256.ct_eq(hash));
    }
    (found != u32::MAX).then_some(found as usize)
}

/// Azure DevOps' PAT shapes: 84 characters with the fixed signature `AZDO` at 76..80 (since
/// 2024), or 52 characters of lower-case base32 (before).
fn looks_like_pat(credential: &[u8]) -> bool {
    match credential.len() {
        84 => &credential[76..80] == b"AZDO" && credential.iter().all(u8::is_ascii_alphanumeric),
        52 => credential
            .iter()
            .all(|&b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)),
        _ => false,
    }
}

/// Three base64url parts, the first a JSON object (`eyJ`): a client key never looks like this.
fn looks_like_jwt(credential: &[u8]) -> bool {
    credential.starts_with(b"eyJ") && credential.iter().filter(|&&b| b == b'.').count() == 2
}

/// `user:key` decoded from Basic credentials of up to this size stays on the stack.
const BASIC_ON_STACK: usize = 512;

/// Finds the key (or token) in an `Authorization` value and hands it to `use_key`; the decoded
/// credentials live only for that call. `longest`: the longest credential looked at.
fn with_presented_credential<T>(
    value: &[u8],
    longest: usize,
    use_key: impl FnOnce(&[u8]) -> T,
) -> Option<T> {
    let (scheme, rest) = split_scheme(value)?;
    let key_of = |key: &[u8]| (!key.is_empty() && key.len() <= longest).then_some(());
    if scheme.eq_ignore_ascii_case(b"bearer") {
        let key = rest.trim_ascii();
        key_of(key)?;
        return Some(use_key(key));
    }
    if scheme.eq_ignore_ascii_case(b"basic") {
        // Decoded on the stack when it fits, as every client key and PAT does: this runs for
        // every request in keys mode.
        let encoded = rest.trim_ascii();
        let mut on_stack = [0u8; BASIC_ON_STACK];
        let on_heap;
        let decoded = if base64::decoded_len_estimate(encoded.len()) <= BASIC_ON_STACK {
            let len = base64::engine::general_purpose::STANDARD
                .decode_slice(encoded, &mut on_stack)
                .ok()?;
            &on_stack[..len]
        } else {
            on_heap = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()?;
            &on_heap[..]
        };
        // `user:key` as git, npm, pip and curl send a PAT; `key:` or `key` when the key was put
        // where the user name goes (`https://KEY@host/...`).
        let key = match decoded.iter().position(|&b| b == b':') {
            Some(colon) if colon + 1 < decoded.len() => &decoded[colon + 1..],
            Some(colon) => &decoded[..colon],
            None => decoded,
        };
        key_of(key)?;
        return Some(use_key(key));
    }
    None
}

fn split_scheme(value: &[u8]) -> Option<(&[u8], &[u8])> {
    let space = value.iter().position(|&b| b == b' ')?;
    Some((&value[..space], &value[space + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pat_shapes_are_recognised_and_nothing_else() {
        let new = format!(
            "{}JQQJ99BASE{}AZDO{}",
            "a".repeat(52),
            "b".repeat(14),
            "3xYz"
        );
        assert_eq!(new.len(), 84);
        assert!(looks_like_pat(new.as_bytes()));
        assert!(looks_like_pat(
            "abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrst".as_bytes()
        ));
        for other in [
            new.replace("AZDO", "AZDX"),
            "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567ABCDEFGHIJKLMNOPQRST".into(),
            "abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrs1".into(),
            "aap_a-client-key-of-forty-seven-characters-0123".into(),
        ] {
            assert!(!looks_like_pat(other.as_bytes()), "{other}");
        }
    }

    fn basic(credentials: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        )
    }

    fn presented(value: &str) -> Option<Vec<u8>> {
        with_presented_credential(value.as_bytes(), MAX_KEY_BYTES, <[u8]>::to_vec)
    }

    #[test]
    fn keys_are_found_wherever_tools_put_a_pat() {
        let key = b"aap_secret".to_vec();
        assert_eq!(presented(&basic("git:aap_secret")), Some(key.clone()));
        assert_eq!(presented(&basic(":aap_secret")), Some(key.clone()));
        assert_eq!(presented(&basic("aap_secret:")), Some(key.clone()));
        assert_eq!(presented(&basic("aap_secret")), Some(key.clone()));
        assert_eq!(presented("Bearer aap_secret"), Some(key.clone()));
        assert_eq!(presented("bearer  aap_secret "), Some(key));
        assert_eq!(presented("Basic !!!"), None);
        assert_eq!(presented(&basic(":")), None);
        assert_eq!(presented("Bearer "), None);
        assert_eq!(presented("Digest abc"), None);
        assert_eq!(presented("aap_secret"), None);
        assert_eq!(presented(&format!("Bearer {}", "a".repeat(300))), None);
    }

    #[test]
    fn long_basic_credentials_are_decoded_whole() {
        // A keyless client's token put where a PAT goes: past what is decoded on the stack.
        let token = format!("eyJ{}.e30.sig", "x".repeat(BASIC_ON_STACK + 100));
        let found =
            with_presented_credential(basic(&format!("git:{token}")).as_bytes(), 8192, |key| {
                key.to_vec()
            });
        assert_eq!(found, Some(token.into_bytes()));
        let at_the_edge = "k".repeat(BASIC_ON_STACK - 1);
        assert_eq!(
            with_presented_credential(basic(&format!(":{at_the_edge}")).as_bytes(), 8192, |key| {
                key.len()
            }),
            Some(BASIC_ON_STACK - 1)
        );
    }

    proptest::proptest! {
        /// Any `Authorization` value: no panic, and a key is found only within the caps.
        #[test]
        fn any_authorization_value_is_a_key_or_nothing(value in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            if let Some(key) = presented_bytes(&value) {
                proptest::prop_assert!(!key.is_empty() && key.len() <= MAX_KEY_BYTES);
            }
        }

        /// A key sent the way git, curl and the SDKs send a PAT is found, whatever the user name.
        #[test]
        fn basic_credentials_round_trip(
            user in "[^:]{0,40}",
            key in "[!-~]{1,200}",
        ) {
            proptest::prop_assert_eq!(presented(&basic(&format!("{user}:{key}"))), Some(key.as_bytes().to_vec()));
        }
    }

    fn presented_bytes(value: &[u8]) -> Option<Vec<u8>> {
        with_presented_credential(value, MAX_KEY_BYTES, <[u8]>::to_vec)
    }
}
