//! `lab serve`: the echo server each pod namespace runs. For every address
//! and port, a TCP listener and a UDP socket answer a request line
//! `probe <token>` with `<namespace>/<pod> <token>` (every line of a TCP
//! connection), so a prober knows it reached the pod it aimed at.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use thiserror::Error;

/// `lab serve` arguments.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// State directory of the lab (identifies the process as the lab's).
    #[arg(long = "lab-dir")]
    pub dir: PathBuf,
    /// `namespace/name` of the pod, sent in every answer.
    #[arg(long)]
    pub label: String,
    /// Addresses to listen on.
    #[arg(long)]
    pub bind: Vec<IpAddr>,
    /// Ports to serve, TCP and UDP each.
    #[arg(long, value_delimiter = ',')]
    pub ports: Vec<u16>,
    /// File created once every socket is bound.
    #[arg(long)]
    pub ready: PathBuf,
}

/// The echo server could not start.
#[derive(Debug, Error)]
pub enum ServeError {
    /// Binding a socket failed.
    #[error("binding {protocol} {addr}")]
    Bind {
        /// TCP or UDP.
        protocol: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Writing the ready file failed.
    #[error("writing {path}")]
    Ready {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The answer to request `line` from pod `label`.
pub fn answer(label: &str, line: &str) -> Option<String> {
    let token = line.trim_end().strip_prefix("probe ")?;
    Some(format!("{label} {token}\n"))
}

/// Runs the server until killed.
pub fn serve(args: &ServeArgs) -> Result<(), ServeError> {
    let mut threads = Vec::new();
    for ip in &args.bind {
        for port in &args.ports {
            let addr = SocketAddr::new(*ip, *port);
            let tcp = TcpListener::bind(addr).map_err(|source| ServeError::Bind {
                protocol: "TCP",
                addr,
                source,
            })?;
            let udp =
                UdpSocket::bind(addr).map_err(|source| ServeError::Bind { protocol: "UDP", addr, source })?;
            let label = args.label.clone();
            threads.push(std::thread::spawn(move || serve_tcp(tcp, &label)));
            let label = args.label.clone();
            threads.push(std::thread::spawn(move || serve_udp(udp, &label)));
        }
    }
    std::fs::write(&args.ready, b"ready\n")
        .map_err(|source| ServeError::Ready { path: args.ready.clone(), source })?;
    eprintln!("serving {} on {:?} ports {:?} (TCP and UDP)", args.label, args.bind, args.ports);
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn serve_tcp(listener: TcpListener, label: &str) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let label = label.to_string();
        std::thread::spawn(move || {
            let _ = answer_tcp(conn, &label);
        });
    }
}

/// Answers every request line of a connection until it closes (so a test
/// can keep a connection open across a policy change).
fn answer_tcp(conn: TcpStream, label: &str) -> std::io::Result<()> {
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    loop {
        let mut line = String::new();
        if (&mut reader).take(256).read_line(&mut line)? == 0 {
            return Ok(());
        }
        if let Some(reply) = answer(label, &line) {
            (&conn).write_all(reply.as_bytes())?;
        }
    }
}

fn serve_udp(sock: UdpSocket, label: &str) {
    let mut buf = [0u8; 512];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf) else { continue };
        let line = String::from_utf8_lossy(&buf[..n]);
        if let Some(reply) = answer(label, &line) {
            let _ = sock.send_to(reply.as_bytes(), from);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_name_the_pod_and_echo_the_token() {
        assert_eq!(answer("x/a", "probe 17\n").as_deref(), Some("x/a 17\n"));
        assert_eq!(answer("x/a", "hello\n"), None);
    }
}
