//! A fake OIDC issuer (GitHub Actions, a Kubernetes cluster, Azure Pipelines: they all look like
//! this to a relying party): discovery and JWKS over HTTPS on 127.0.0.1, with the upstream test
//! certificate (the proxy trusts its CA through `upstream.ca_file`), and signers that mint real
//! RS256, PS256 and ES256 tokens with ring. The published keys can be changed at any time, as an
//! issuer rotates them, and every fetch is counted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::assertion::{Alg, RsaSigner};
use super::{fixtures, json_response, jwt};

struct State {
    url: String,
    jwks: Mutex<Value>,
    jwks_fetches: AtomicUsize,
}

pub struct FakeIssuer {
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl FakeIssuer {
    /// Publishes no key until [`FakeIssuer::publish`].
    pub async fn start() -> FakeIssuer {
        let acceptor = super::tls_upstream::acceptor_with(
            "upstream-cert.pem",
            "upstream-key.pk8.pem",
            &[b"http/1.1"],
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let state = Arc::new(State {
            url: format!("https://127.0.0.1:{}", addr.port()),
            jwks: Mutex::new(json!({ "keys": [] })),
            jwks_fetches: AtomicUsize::new(0),
        });
        let serving = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, state) = (acceptor.clone(), serving.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |request: Request<Incoming>| {
                        let state = state.clone();
                        async move { Ok::<_, std::convert::Infallible>(answer(&state, &request)) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        FakeIssuer { state, task }
    }

    /// The issuer URL, as tokens name it in `iss`.
    pub fn url(&self) -> String {
        self.state.url.clone()
    }

    /// From now on the JWKS holds exactly these keys.
    pub fn publish(&self, signers: &[&Signer]) {
        let keys: Vec<Value> = signers.iter().map(|signer| signer.jwk()).collect();
        *self.state.jwks.lock().expect("jwks lock") = json!({ "keys": keys });
    }

    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    /// Claims as GitHub Actions sets them, valid for ten minutes from now.
    pub fn claims(&self, audience: &str, subject: &str) -> Value {
        let now = jwt::now();
        json!({
            "iss": self.url(),
            "aud": audience,
            "sub": subject,
            "repository": "contoso/web",
            "iat": now,
            "nbf": now,
            "exp": now + 600,
        })
    }
}

impl Drop for FakeIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(state: &State, request: &Request<Incoming>) -> http::Response<super::Body> {
    match request.uri().path() {
        "/.well-known/openid-configuration" => json_response(
            StatusCode::OK,
            &json!({
                "issuer": state.url,
                "jwks_uri": format!("{}/keys", state.url),
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256", "PS256", "ES256"],
            }),
        ),
        "/keys" => {
            state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
            json_response(StatusCode::OK, &state.jwks.lock().expect("jwks lock"))
        }
        _ => json_response(StatusCode::NOT_FOUND, &json!({ "error": "not found" })),
    }
}

/// An issuer's signing key, under its `kid`.
pub enum Signer {
    Rsa { kid: String, key: RsaSigner },
    Ec { kid: String, key: EcdsaKeyPair },
}

impl Signer {
    /// The RSA key of `sp-key.pk8.pem`.
    pub fn rsa(kid: &str) -> Signer {
        Signer::Rsa {
            kid: kid.into(),
            key: RsaSigner::sp(),
        }
    }

    /// Another RSA key (`forged-key.pk8.pem`).
    pub fn other_rsa(kid: &str) -> Signer {
        Signer::Rsa {
            kid: kid.into(),
            key: RsaSigner::forged(),
        }
    }

    /// The P-256 key of `issuer-ec-key.pk8.pem`.
    pub fn ec(kid: &str) -> Signer {
        let der = PrivateKeyDer::from_pem_file(fixtures::path("issuer-ec-key.pk8.pem"))
            .expect("EC fixture");
        let key = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            der.secret_der(),
            &SystemRandom::new(),
        )
        .expect("a P-256 PKCS#8 key ring accepts");
        Signer::Ec {
            kid: kid.into(),
            key,
        }
    }

    pub fn kid(&self) -> &str {
        match self {
            Signer::Rsa { kid, .. } | Signer::Ec { kid, .. } => kid,
        }
    }

    /// The public key as a JWK, as issuers publish it.
    pub fn jwk(&self) -> Value {
        match self {
            Signer::Rsa { kid, key } => {
                let (n, e) = rsa_components(&key.public_key_der());
                json!({ "kty": "RSA", "kid": kid, "use": "sig", "n": B64.encode(n), "e": B64.encode(e) })
            }
            Signer::Ec { kid, key } => {
                // The uncompressed point: 0x04, then x and y.
                let point = key.public_key().as_ref();
                json!({
                    "kty": "EC", "kid": kid, "use": "sig", "crv": "P-256",
                    "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65]),
                })
            }
        }
    }

    /// A token of `claims` signed with `alg` ("RS256", "PS256" or "ES256") under this key's kid.
    pub fn mint(&self, alg: &str, claims: &Value) -> String {
        let header = json!({ "alg": alg, "kid": self.kid(), "typ": "JWT" });
        self.mint_with_header(&header, claims)
    }

    /// Signs with this key whatever `header` says, so tests can lie about the algorithm.
    pub fn mint_with_header(&self, header: &Value, claims: &Value) -> String {
        match self {
            Signer::Rsa { key, .. } => {
                let alg = if header["alg"] == "PS256" {
                    Alg::Ps256
                } else {
                    Alg::Rs256
                };
                key.sign_raw(alg, header, claims)
            }
            Signer::Ec { key, .. } => {
                let input = format!(
                    "{}.{}",
                    B64.encode(header.to_string()),
                    B64.encode(claims.to_string())
                );
                let signature = key
                    .sign(&SystemRandom::new(), input.as_bytes())
                    .expect("ECDSA signing");
                format!("{input}.{}", B64.encode(signature.as_ref()))
            }
        }
    }
}

/// `n` and `e` of an RSAPublicKey DER (SEQUENCE of two INTEGERs), without leading zeros.
fn rsa_components(der: &[u8]) -> (Vec<u8>, Vec<u8>) {
    fn read(der: &[u8]) -> (u8, &[u8], &[u8]) {
        let tag = der[0];
        let (length, header) = match der[1] {
            short if short < 0x80 => (usize::from(short), 2),
            long => {
                let bytes = usize::from(long & 0x7f);
                let length = der[2..2 + bytes]
                    .iter()
                    .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
                (length, 2 + bytes)
            }
        };
        (tag, &der[header..header + length], &der[header + length..])
    }
    let (_, sequence, _) = read(der);
    let (_, n, rest) = read(sequence);
    let (_, e, _) = read(rest);
    let strip = |bytes: &[u8]| {
        let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
        bytes[first..].to_vec()
    };
    (strip(n), strip(e))
}
