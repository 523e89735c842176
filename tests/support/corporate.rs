//! The corporate network's parts, on loopback: an HTTP proxy that only tunnels (`CONNECT`) and
//! asks for Basic credentials, recording every request it gets; and a TLS front that gives the
//! plain-HTTP fake Entra ID a real-looking https host name to be reached at through it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the proxy was asked, one per request head it read.
#[derive(Clone, Debug)]
pub struct Asked {
    pub method: String,
    /// `host:port` for `CONNECT`.
    pub target: String,
    pub proxy_authorization: Option<String>,
    /// Every other header line, as received.
    pub headers: Vec<String>,
    /// Tunnelled to a routed address (credentials right, target known).
    pub tunnelled: bool,
}

pub struct ConnectProxy {
    addr: SocketAddr,
    asked: Arc<Mutex<Vec<Asked>>>,
    task: JoinHandle<()>,
}

impl ConnectProxy {
    /// Tunnels `CONNECT host:port` to the address `routes` gives it, when the request carries
    /// `Proxy-Authorization: Basic base64(user:password)`; anything else gets 407, 405 or 502.
    pub async fn start(routes: Vec<(String, SocketAddr)>, user: &str, password: &str) -> Self {
        use base64::Engine as _;
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let asked: Arc<Mutex<Vec<Asked>>> = Arc::default();
        let record = asked.clone();
        let routes = Arc::new(routes);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (record, routes, expected) = (record.clone(), routes.clone(), expected.clone());
                tokio::spawn(async move {
                    serve(client, &routes, &expected, &record).await;
                });
            }
        });
        ConnectProxy { addr, asked, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn asked(&self) -> Vec<Asked> {
        self.asked.lock().expect("asked lock").clone()
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut client: TcpStream,
    routes: &[(String, SocketAddr)],
    expected: &str,
    record: &Mutex<Vec<Asked>>,
) {
    let Some(head) = read_head(&mut client).await else {
        return;
    };
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_string();
    let target = request_line.next().unwrap_or_default().to_string();
    let mut proxy_authorization = None;
    let mut headers = Vec::new();
    for line in lines.filter(|line| !line.is_empty()) {
        match line.split_once(':') {
            Some((name, value)) if name.eq_ignore_ascii_case("proxy-authorization") => {
                proxy_authorization = Some(value.trim().to_string());
            }
            _ => headers.push(line.to_string()),
        }
    }
    let route = routes
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(&target))
        .map(|(_, address)| *address);
    let answer = if method != "CONNECT" {
        Err("405 Method Not Allowed")
    } else if proxy_authorization.as_deref() != Some(expected) {
        Err("407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"corp\"")
    } else {
        route.ok_or("502 Bad Gateway")
    };
    record.lock().expect("asked lock").push(Asked {
        method,
        target,
        proxy_authorization,
        headers,
        tunnelled: answer.is_ok(),
    });
    match answer {
        Err(status) => {
            let _ = client
                .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                .await;
        }
        Ok(address) => {
            let Ok(mut upstream) = TcpStream::connect(address).await else {
                return;
            };
            if client
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await
                .is_ok()
            {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            }
        }
    }
}

/// The request head, up to and without the blank line; `None` past 16 KiB or at EOF.
async fn read_head(client: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte: nothing after the head may be consumed, it belongs to the tunnel.
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 || client.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    head.truncate(head.len() - 4);
    String::from_utf8(head).ok()
}

/// TLS on 127.0.0.1 with the Azure DevOps test certificate (`*.dev.azure.com`, ...), each
/// connection's plaintext relayed to `backend`.
pub struct TlsFront {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TlsFront {
    pub async fn start(backend: SocketAddr) -> Self {
        let acceptor = super::tls_upstream::acceptor_with(
            "devops-cert.pem",
            "devops-key.pk8.pem",
            &[b"http/1.1"],
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut plain) = TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsFront { addr, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}
