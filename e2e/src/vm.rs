//! The kernel-VM leg of the harness (`e2e/scripts/vm.sh`, e2e/README.md "Kernel VM"): a qemu
//! VM running Debian's kernel, whose root is the host's filesystem (read-only, through 9p,
//! under a tmpfs overlay), so every host binary runs in it at its own path. Commands reach it
//! through `multivpc-vm agent`, PID 1's only service: the host connects to the VM's forwarded
//! port, sends a token and a command, and reads back its output and exit status.
//!
//! Wire format, one command per connection: the client writes the token (a line), then a
//! line of JSON `{"argv": [...], "stdin": "..."}`; the agent answers with frames of one tag
//! byte, a 4-byte big-endian length and the bytes: `1` stdout, `2` stderr, `3` the exit status
//! (an `i32`, negative for a signal), which ends the answer.
//!
//! The token (random, 0600 in the run dir) keeps other local users off a root shell in the
//! VM: the forwarded port listens on a loopback address, which every local process can reach.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::ExecOutput;

pub const TAG_STDOUT: u8 = 1;
pub const TAG_STDERR: u8 = 2;
pub const TAG_EXIT: u8 = 3;
/// The largest frame an agent sends (its reads are 64 KiB); anything larger is a broken peer.
pub const MAX_FRAME: usize = 1 << 20;

/// One command for the agent.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub argv: Vec<String>,
    #[serde(default)]
    pub stdin: String,
}

/// Writes one frame.
pub fn write_frame(to: &mut impl Write, tag: u8, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len()).map_err(|_| io::Error::other("frame too large"))?;
    let mut head = [0u8; 5];
    head[0] = tag;
    head[1..].copy_from_slice(&len.to_be_bytes());
    to.write_all(&head)?;
    to.write_all(bytes)?;
    to.flush()
}

/// Reads one frame: `None` at a clean end of stream.
pub fn read_frame(from: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match from.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::other(format!("frame of {len} bytes")));
    }
    let mut bytes = vec![0; len];
    from.read_exact(&mut bytes)?;
    Ok(Some((head[0], bytes)))
}

/// Where a running VM answers: its agent's address and token, from the run dir.
#[derive(Clone, Debug)]
pub struct Vm {
    pub addr: String,
    token_file: PathBuf,
}

impl Vm {
    /// The VM of the harness whose run dir is `run_dir`, if `vm.sh up` booted one.
    pub fn from_run_dir(run_dir: &Path) -> Option<Self> {
        let dir = run_dir.join("vm");
        let addr = std::fs::read_to_string(dir.join("agent.addr")).ok()?;
        Some(Self {
            addr: addr.trim().to_owned(),
            token_file: dir.join("token"),
        })
    }

    /// Runs `argv` in the VM's root network namespace; a non-zero exit is not an error.
    /// Bounded by `timeout` (connecting and the whole answer).
    pub fn exec_blocking(
        &self,
        argv: &[&str],
        stdin: &str,
        timeout: Duration,
    ) -> Result<ExecOutput> {
        let token = std::fs::read_to_string(&self.token_file)
            .with_context(|| format!("read {}", self.token_file.display()))?;
        let addr = self
            .addr
            .to_socket_addrs()
            .with_context(|| format!("VM agent address {}", self.addr))?
            .next()
            .context("VM agent address resolves to nothing")?;
        let mut conn = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connect to the VM agent at {}", self.addr))?;
        conn.set_read_timeout(Some(timeout))?;
        conn.set_write_timeout(Some(timeout))?;
        let request = Request {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            stdin: stdin.to_owned(),
        };
        let line = serde_json::to_string(&request)?;
        conn.write_all(format!("{}\n{line}\n", token.trim()).as_bytes())?;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let mut reader = BufReader::new(conn);
        let exit_code = loop {
            match read_frame(&mut reader).context("read the VM agent's answer")? {
                None => bail!("the VM agent closed the connection before {argv:?} ended"),
                Some((TAG_STDOUT, b)) => stdout.extend_from_slice(&b),
                Some((TAG_STDERR, b)) => stderr.extend_from_slice(&b),
                Some((TAG_EXIT, b)) => {
                    let code: [u8; 4] = b.as_slice().try_into().context("exit frame")?;
                    break i32::from_be_bytes(code);
                }
                Some((tag, _)) => bail!("VM agent sent frame tag {tag}"),
            }
        };
        Ok(ExecOutput {
            command: request.argv,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            exit_code,
            status_message: None,
        })
    }

    /// [`Vm::exec_blocking`] off the async runtime's threads.
    pub async fn exec(&self, argv: &[&str], timeout: Duration) -> Result<ExecOutput> {
        let vm = self.clone();
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            vm.exec_blocking(&argv, "", timeout)
        })
        .await?
    }

    /// Runs `argv` inside the network namespace `netns` of the VM.
    pub async fn netns_exec(
        &self,
        netns: &str,
        argv: &[&str],
        timeout: Duration,
    ) -> Result<ExecOutput> {
        let mut full = vec!["ip", "netns", "exec", netns];
        full.extend_from_slice(argv);
        self.exec(&full, timeout).await
    }
}

/// Reads the request an agent connection starts with: the token line, then the JSON line.
pub fn read_request(from: &mut impl BufRead, token: &str) -> Result<Request> {
    let mut line = String::new();
    from.take(4096).read_line(&mut line)?;
    if line.trim_end() != token {
        bail!("wrong token");
    }
    line.clear();
    from.take(4 << 20).read_line(&mut line)?;
    serde_json::from_str(&line).context("request")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_a_huge_length_is_refused() {
        let mut buf = Vec::new();
        write_frame(&mut buf, TAG_STDOUT, b"hello").unwrap();
        write_frame(&mut buf, TAG_EXIT, &7i32.to_be_bytes()).unwrap();
        let mut r = buf.as_slice();
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Some((TAG_STDOUT, b"hello".to_vec()))
        );
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Some((TAG_EXIT, 7i32.to_be_bytes().to_vec()))
        );
        assert_eq!(read_frame(&mut r).unwrap(), None);
        let huge = [TAG_STDOUT, 0xff, 0xff, 0xff, 0xff];
        assert!(read_frame(&mut huge.as_slice()).is_err());
    }

    #[test]
    fn a_request_needs_the_token() {
        let good = "s3cret\n{\"argv\":[\"true\"]}\n";
        let r = read_request(&mut good.as_bytes(), "s3cret").unwrap();
        assert_eq!(r.argv, ["true"]);
        assert!(read_request(&mut good.as_bytes(), "other").is_err());
    }
}
