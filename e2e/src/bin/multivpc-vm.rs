//! The kernel VM's command agent and its client (e2e/src/vm.rs has the wire format).
//!
//! ```text
//! multivpc-vm agent --listen 0.0.0.0:7100 --token-file <run>/vm/token   # in the VM (PID 1 starts it)
//! multivpc-vm exec  --run-dir <run> [--stdin] -- CMD [ARGS...]            # on the host
//! multivpc-vm hmp   --run-dir <run> -- 'hostfwd_add n0 tcp:...'            # qemu's monitor
//! ```
//!
//! `exec` prints the command's stdout and stderr as they were and exits with its status
//! (128 + the signal when a signal ended it), so scripts use it like the command itself.

use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use multivpc_e2e::vm::{self, TAG_EXIT, TAG_STDERR, TAG_STDOUT, Vm};

/// How long a connection may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// `exec`'s bound on one command (connect to exit), unless `--timeout` says otherwise.
const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(600);

fn main() {
    let code = match run(std::env::args().skip(1).collect()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("multivpc-vm: {err:#}");
            2
        }
    };
    std::process::exit(code);
}

fn run(args: Vec<String>) -> Result<i32> {
    let mut args = args.into_iter();
    let sub = args.next().unwrap_or_default();
    let mut listen = None;
    let mut token_file = None;
    let mut run_dir = None;
    let mut stdin = false;
    let mut timeout = DEFAULT_EXEC_TIMEOUT;
    let mut argv = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next(),
            "--token-file" => token_file = args.next().map(PathBuf::from),
            "--run-dir" => run_dir = args.next().map(PathBuf::from),
            "--timeout" => {
                let secs: u64 = args
                    .next()
                    .unwrap_or_default()
                    .parse()
                    .context("--timeout SECONDS")?;
                timeout = Duration::from_secs(secs);
            }
            "--stdin" => stdin = true,
            "--" => {
                argv.extend(args.by_ref());
            }
            other => bail!(
                "unknown argument {other:?} (usage: see the header of e2e/src/bin/multivpc-vm.rs)"
            ),
        }
    }
    match sub.as_str() {
        "agent" => {
            let listen = listen.context("agent needs --listen ADDR")?;
            let token_file = token_file.context("agent needs --token-file FILE")?;
            agent(&listen, &token_file)
        }
        "exec" => {
            let run_dir = run_dir.context("exec needs --run-dir DIR")?;
            if argv.is_empty() {
                bail!("exec needs a command after --");
            }
            let vm = Vm::from_run_dir(&run_dir).with_context(|| {
                format!("no VM is up for {} (make e2e-vm-up)", run_dir.display())
            })?;
            let mut input = String::new();
            if stdin {
                std::io::stdin().read_to_string(&mut input)?;
            }
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let out = vm.exec_blocking(&argv, &input, timeout)?;
            std::io::stdout().write_all(out.stdout.as_bytes())?;
            std::io::stderr().write_all(out.stderr.as_bytes())?;
            Ok(if out.exit_code < 0 {
                128 - out.exit_code
            } else {
                out.exit_code
            })
        }
        "hmp" => {
            let run_dir = run_dir.context("hmp needs --run-dir DIR")?;
            // The monitor has no status: its answer is printed for the caller to judge
            // (hostfwd_add answers nothing when it worked).
            let reply = hmp(&run_dir.join("vm/monitor.sock"), &argv.join(" "))?;
            print!("{reply}");
            Ok(0)
        }
        other => bail!("unknown subcommand {other:?}: agent, exec or hmp"),
    }
}

/// Sends one command to qemu's human monitor (HMP) on `socket` and returns its answer (the
/// text between the echoed command and the next prompt).
fn hmp(socket: &std::path::Path, command: &str) -> Result<String> {
    use std::os::unix::net::UnixStream;
    const PROMPT: &str = "(qemu) ";
    let mut conn = UnixStream::connect(socket)
        .with_context(|| format!("connect to qemu's monitor {}", socket.display()))?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let read_to_prompt = |conn: &mut UnixStream| -> Result<String> {
        let mut text = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&text).ends_with(PROMPT) {
            let n = conn.read(&mut buf).context("read qemu's monitor")?;
            if n == 0 {
                bail!("qemu's monitor closed");
            }
            text.extend_from_slice(&buf[..n]);
        }
        Ok(String::from_utf8_lossy(&text).into_owned())
    };
    read_to_prompt(&mut conn)?;
    conn.write_all(format!("{command}\n").as_bytes())?;
    let answer = read_to_prompt(&mut conn)?;
    // The monitor echoes the command (with terminal escapes) before its answer.
    let answer = answer.trim_end_matches(PROMPT);
    let body = answer.split_once('\n').map(|(_, rest)| rest).unwrap_or("");
    Ok(body.replace('\r', ""))
}

fn agent(listen: &str, token_file: &PathBuf) -> Result<i32> {
    let token = std::fs::read_to_string(token_file)
        .with_context(|| format!("read {}", token_file.display()))?
        .trim()
        .to_owned();
    let listener = TcpListener::bind(listen).with_context(|| format!("listen on {listen}"))?;
    eprintln!("multivpc-vm agent: listening on {listen}");
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let token = token.clone();
        std::thread::spawn(move || {
            if let Err(err) = serve(conn, &token) {
                eprintln!("multivpc-vm agent: {err:#}");
            }
        });
    }
    Ok(0)
}

fn serve(conn: TcpStream, token: &str) -> Result<()> {
    conn.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let request = vm::read_request(&mut reader, token)?;
    let out = Arc::new(Mutex::new(conn));
    let send = |tag: u8, bytes: &[u8]| {
        let mut conn = out.lock().unwrap_or_else(|p| p.into_inner());
        vm::write_frame(&mut *conn, tag, bytes)
    };
    let Some((program, args)) = request.argv.split_first() else {
        send(TAG_STDERR, b"empty command\n")?;
        return send(TAG_EXIT, &127i32.to_be_bytes()).map_err(Into::into);
    };
    let mut child = match Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(err) => {
            send(
                TAG_STDERR,
                format!("cannot run {program}: {err}\n").as_bytes(),
            )?;
            return send(TAG_EXIT, &127i32.to_be_bytes()).map_err(Into::into);
        }
    };
    let mut child_stdin = child.stdin.take().context("stdin")?;
    let input = request.stdin;
    let feeder = std::thread::spawn(move || {
        let _ = child_stdin.write_all(input.as_bytes());
    });
    let pump = |mut from: Box<dyn Read + Send>, tag: u8| {
        let out = out.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0; 64 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let mut conn = out.lock().unwrap_or_else(|p| p.into_inner());
                        if vm::write_frame(&mut *conn, tag, &buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        })
    };
    let stdout = pump(Box::new(child.stdout.take().context("stdout")?), TAG_STDOUT);
    let stderr = pump(Box::new(child.stderr.take().context("stderr")?), TAG_STDERR);
    let status = child.wait()?;
    let _ = (feeder.join(), stdout.join(), stderr.join());
    let code = status
        .code()
        .unwrap_or_else(|| -status.signal().unwrap_or(0));
    send(TAG_EXIT, &code.to_be_bytes())?;
    Ok(())
}
