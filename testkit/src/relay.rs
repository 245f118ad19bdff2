//! A fault-injecting TCP relay between a client and a real server: passes bytes through, or
//! delays, resets, or answers HTTP 502. Changing the mode cuts the connections already
//! relayed, so pooled clients meet the new fault at once.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Relay bytes unchanged.
    Pass,
    /// Wait this long before relaying (slower than the client's timeout, for a timeout).
    Delay(Duration),
    /// Reset every connection (RST).
    Reset,
    /// Answer every request with `502 Bad Gateway`.
    BadGateway,
}

pub struct Relay {
    pub addr: SocketAddr,
    mode: watch::Sender<Fault>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Listens on a free loopback port and relays to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("addr");
        let (mode, rx) = watch::channel(Fault::Pass);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let mut rx = rx.clone();
                tokio::spawn(async move {
                    let fault = *rx.borrow_and_update();
                    let work = handle(client, upstream, fault);
                    tokio::select! {
                        _ = work => {}
                        _ = rx.changed() => {}
                    }
                });
            }
        });
        Relay { addr, mode, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, fault: Fault) {
        self.mode.send_replace(fault);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(mut client: TcpStream, upstream: SocketAddr, fault: Fault) {
    match fault {
        Fault::Reset => {
            let _ = client.set_zero_linger();
            drop(client);
        }
        Fault::BadGateway => {
            let mut buf = [0u8; 16 * 1024];
            // Read one request head, answer, close.
            let _ = client.read(&mut buf).await;
            let _ = client
                .write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: 11\r\nConnection: close\r\n\r\nbad gateway")
                .await;
        }
        Fault::Delay(d) => {
            tokio::time::sleep(d).await;
            pass(client, upstream).await;
        }
        Fault::Pass => pass(client, upstream).await,
    }
}

async fn pass(mut client: TcpStream, upstream: SocketAddr) {
    if let Ok(mut server) = TcpStream::connect(upstream).await {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
    }
}
