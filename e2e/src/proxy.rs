//! A loopback TCP proxy in front of an API server that a test can cut: a controller given a
//! kubeconfig through it loses the API server (every connection dropped, new ones closed at
//! once) while everything else still reaches it. The network partition of one replica. Or
//! freeze it: connections stay open and their bytes are held, as through a path that silently
//! stopped delivering (no reset, no error; only timeouts notice).

use std::{net::SocketAddr, path::Path};

use anyhow::{Context, Result};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Link {
    Open,
    Frozen,
    Cut,
}

/// The proxy; it stops when dropped.
pub struct CuttableProxy {
    pub addr: SocketAddr,
    state: watch::Sender<Link>,
    task: JoinHandle<()>,
}

/// Copies `from` to `to`, holding what it read while the path is frozen; ends when the path is
/// cut or `from` ends (then `to` is shut down for writing: a half-close passes through).
async fn relay(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut state: watch::Receiver<Link>,
) {
    let mut buf = vec![0; 64 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buf) => read.ok().filter(|n| *n > 0),
            _ = state.wait_for(|s| *s == Link::Cut) => return,
        };
        let Some(n) = read else {
            let _ = to.shutdown().await;
            return;
        };
        match state.wait_for(|s| *s != Link::Frozen).await {
            Ok(s) if *s == Link::Open => {}
            _ => return,
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl CuttableProxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (state, _) = watch::channel(Link::Open);
        let task = tokio::spawn({
            let state = state.clone();
            async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    if *state.borrow() == Link::Cut {
                        continue; // dropped: closed at once
                    }
                    let (up, down) = (state.subscribe(), state.subscribe());
                    tokio::spawn(async move {
                        let Ok(outbound) = TcpStream::connect(target).await else {
                            return;
                        };
                        let (in_read, in_write) = inbound.into_split();
                        let (out_read, out_write) = outbound.into_split();
                        tokio::join!(
                            relay(in_read, out_write, up),
                            relay(out_read, in_write, down)
                        );
                    });
                }
            }
        });
        Ok(Self { addr, state, task })
    }

    /// Drops every connection and refuses new ones until [`CuttableProxy::restore`].
    pub fn cut(&self) {
        self.state.send_replace(Link::Cut);
    }

    /// Holds every byte in both directions (connections stay open, new ones are accepted)
    /// until [`CuttableProxy::restore`].
    pub fn freeze(&self) {
        self.state.send_replace(Link::Frozen);
    }

    /// Forwards again (what a freeze held is delivered).
    pub fn restore(&self) {
        self.state.send_replace(Link::Open);
    }

    /// A proxy in front of the API server of the kubeconfig at `from`, and a copy of that
    /// kubeconfig through the proxy written to `to`.
    pub async fn in_front_of(from: &Path, to: &Path) -> Result<Self> {
        let mut config = kube::config::Kubeconfig::read_from(from)
            .with_context(|| format!("read {}", from.display()))?;
        let cluster = config
            .clusters
            .iter_mut()
            .find_map(|c| c.cluster.as_mut())
            .context("the kubeconfig names no cluster")?;
        let server = cluster.server.clone().unwrap_or_default();
        let target: SocketAddr = server
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .parse()
            .with_context(|| format!("server {server:?} is not https://<ip>:<port>"))?;
        let proxy = Self::start(target).await?;
        cluster.server = Some(format!("https://{}", proxy.addr));
        std::fs::write(to, serde_yaml::to_string(&config)?)
            .with_context(|| format!("write {}", to.display()))?;
        Ok(proxy)
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}
