//! A loopback TCP proxy in front of an API server that a test can cut: a controller given a
//! kubeconfig through it loses the API server (every connection dropped, new ones closed at
//! once) while everything else still reaches it. The network partition of one replica.

use std::{net::SocketAddr, path::Path};

use anyhow::{Context, Result};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

/// The proxy; it stops when dropped.
pub struct CuttableProxy {
    pub addr: SocketAddr,
    open: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl CuttableProxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (open, _) = watch::channel(true);
        let task = tokio::spawn({
            let open = open.clone();
            async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    if !*open.borrow() {
                        continue; // dropped: closed at once
                    }
                    let mut cut = open.subscribe();
                    tokio::spawn(async move {
                        let Ok(outbound) = TcpStream::connect(target).await else {
                            return;
                        };
                        let (mut inbound, mut outbound) = (inbound, outbound);
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = cut.wait_for(|open| !*open) => {}
                        }
                    });
                }
            }
        });
        Ok(Self { addr, open, task })
    }

    /// Drops every connection and refuses new ones until [`CuttableProxy::restore`].
    pub fn cut(&self) {
        self.open.send_replace(false);
    }

    /// Forwards again.
    pub fn restore(&self) {
        self.open.send_replace(true);
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
