//! Floods a party's RA-TLS port with what has not authenticated, until
//! killed or for a given time: TCP connect and close, garbage bytes, and
//! connections held open without a byte, from many loopback addresses
//! (127.0.2.x). For the benchmark of training throughput under probes:
//! `cargo run --release -p vfl-cli --example probe_flood -- 127.0.0.1:50051 [SECONDS]`.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn main() {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .expect("usage: probe_flood HOST:PORT [SECONDS]")
        .parse()
        .expect("HOST:PORT");
    let secs: u64 = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(u64::MAX);
    let start = Instant::now();
    let mut n = 0u64;
    let mut held: Vec<socket2::Socket> = Vec::new();
    while start.elapsed() < Duration::from_secs(secs) {
        n += 1;
        match n % 3 {
            0 => drop(TcpStream::connect(addr)),
            1 => {
                if let Ok(mut s) = TcpStream::connect(addr) {
                    let _ = s.write_all(b"\x16\x03\x01\x02\x00garbage garbage garbage");
                }
            }
            _ => {
                // Half-open, from a rotating source address; the server
                // closes it at its handshake deadline.
                let src: SocketAddr = format!("127.0.2.{}:0", n % 200 + 1).parse().unwrap();
                if let Ok(s) = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                    && s.bind(&src.into()).is_ok()
                    && s.connect(&addr.into()).is_ok()
                {
                    held.push(s);
                    if held.len() > 200 {
                        held.remove(0);
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    eprintln!("probe_flood: {n} probes");
}
