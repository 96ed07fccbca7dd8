//! TCP forwarder between network namespaces, used by the e2e harness.
//!
//! Each rule is `LISTEN=CONNECT`, both of the form `[NETNS@]IP:PORT`, where
//! NETNS is a name under /run/netns (no NETNS: the forwarder's own netns).
//! The listening socket is created inside the listen netns and each outgoing
//! connection is created inside the connect netns (a socket keeps the netns it
//! was created in, so only the creating thread has to switch with setns).
//!
//! The harness uses it so that kube-apiserver (host, 127.0.0.1) reaches the
//! kubelet API of a kwok-controller running inside a gateway netns, and that
//! kwok-controller reaches kube-apiserver through its own 127.0.0.1.
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::thread;

#[derive(Clone, Debug)]
struct Endpoint {
    netns: Option<String>,
    addr: SocketAddr,
}

fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    let (netns, addr) = match s.split_once('@') {
        Some((ns, a)) => (Some(ns.to_string()), a),
        None => (None, s),
    };
    if let Some(ns) = &netns
        && (ns.is_empty() || ns.contains('/'))
    {
        return Err(format!("bad netns name in {s:?}"));
    }
    let addr = addr
        .parse::<SocketAddr>()
        .map_err(|e| format!("bad address in {s:?}: {e}"))?;
    Ok(Endpoint { netns, addr })
}

/// Run `f` with the calling thread switched into `netns`, then switch back.
fn in_netns<T>(netns: &Option<String>, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let Some(ns) = netns else { return f() };
    let own = File::open("/proc/thread-self/ns/net")?;
    let target = File::open(format!("/run/netns/{ns}"))?;
    setns(&target)?;
    let res = f();
    setns(&own).expect("cannot switch back to the original netns");
    res
}

fn setns(f: &File) -> io::Result<()> {
    // SAFETY: setns only reads the fd; CLONE_NEWNET affects the calling thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

fn serve(listener: TcpListener, connect: Endpoint) {
    for conn in listener.incoming() {
        let Ok(inbound) = conn else { continue };
        let connect = connect.clone();
        thread::spawn(move || {
            let outbound = match in_netns(&connect.netns, || TcpStream::connect(connect.addr)) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("connect {connect:?}: {e}");
                    return;
                }
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (Ok(in2), Ok(out2)) = (inbound.try_clone(), outbound.try_clone()) else {
                return;
            };
            let t = thread::spawn(move || pipe(in2, out2));
            pipe(outbound, inbound);
            let _ = t.join();
        });
    }
}

fn main() {
    // `--tag=...` arguments are ignored: the harness marks its processes with
    // its run dir so that e2e-down can find strays.
    let rules: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--tag="))
        .collect();
    if rules.is_empty() || rules.iter().any(|r| r == "-h" || r == "--help") {
        eprintln!("usage: multivpc-netns-forward [NETNS@]IP:PORT=[NETNS@]IP:PORT ...");
        std::process::exit(2);
    }
    let mut handles = Vec::new();
    for rule in rules {
        let parsed = rule
            .split_once('=')
            .ok_or_else(|| format!("rule {rule:?} lacks '='"))
            .and_then(|(l, c)| Ok((parse_endpoint(l)?, parse_endpoint(c)?)));
        let (listen, connect) = match parsed {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(2);
            }
        };
        let listener = match in_netns(&listen.netns, || TcpListener::bind(listen.addr)) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("listen {listen:?}: {e}");
                std::process::exit(1);
            }
        };
        eprintln!("forwarding {listen:?} -> {connect:?}");
        handles.push(thread::spawn(move || serve(listener, connect)));
    }
    for h in handles {
        let _ = h.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_and_without_netns() {
        let e = parse_endpoint("mvpc20-c1-gw-a@127.0.0.1:10250").unwrap();
        assert_eq!(e.netns.as_deref(), Some("mvpc20-c1-gw-a"));
        assert_eq!(e.addr, "127.0.0.1:10250".parse().unwrap());
        let e = parse_endpoint("127.20.1.1:10250").unwrap();
        assert!(e.netns.is_none());
        assert!(parse_endpoint("../x@127.0.0.1:1").is_err());
        assert!(parse_endpoint("@127.0.0.1:1").is_err());
        assert!(parse_endpoint("ns@localhost").is_err());
    }

    #[test]
    fn forwards_bytes_both_ways_in_the_own_netns() {
        let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
        let up_addr = upstream.local_addr().unwrap();
        thread::spawn(move || {
            let (mut s, _) = upstream.accept().unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).unwrap();
            s.write_all(&buf.map(|b| b.to_ascii_uppercase())).unwrap();
        });
        let front = TcpListener::bind("127.0.0.1:0").unwrap();
        let front_addr = front.local_addr().unwrap();
        let connect = Endpoint {
            netns: None,
            addr: up_addr,
        };
        thread::spawn(move || serve(front, connect));
        let mut c = TcpStream::connect(front_addr).unwrap();
        c.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"HELLO");
    }
}
