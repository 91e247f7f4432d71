//! A TCP proxy for tests: forwards every connection to an upstream address
//! and can cut all open connections (both sides see them close) or freeze
//! them (no byte passes, nothing closes: a silent network). Connections made
//! after a cut or freeze work normally. Shared by the bridge's and the CLI's
//! tests.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct Conn {
    client: TcpStream,
    server: TcpStream,
    frozen: Arc<AtomicBool>,
}

pub struct Proxy {
    pub addr: SocketAddr,
    upstream: Arc<Mutex<SocketAddr>>,
    open: Arc<Mutex<Vec<Conn>>>,
    accepted: Arc<AtomicUsize>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let upstream = Arc::new(Mutex::new(upstream));
        let open = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (up, op, acc) = (upstream.clone(), open.clone(), accepted.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let target = *up.lock().unwrap();
                let Ok(server) = TcpStream::connect(target) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                acc.fetch_add(1, Ordering::SeqCst);
                let frozen = Arc::new(AtomicBool::new(false));
                pump(client.try_clone().unwrap(), server.try_clone().unwrap(), frozen.clone());
                pump(server.try_clone().unwrap(), client.try_clone().unwrap(), frozen.clone());
                op.lock().unwrap().push(Conn { client, server, frozen });
            }
        });
        Proxy {
            addr,
            upstream,
            open,
            accepted,
        }
    }

    /// Points new connections at another upstream.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap() = upstream;
    }

    /// Closes every open connection; returns how many.
    pub fn cut(&self) -> usize {
        let conns: Vec<Conn> = std::mem::take(&mut *self.open.lock().unwrap());
        for c in &conns {
            let _ = c.client.shutdown(Shutdown::Both);
            let _ = c.server.shutdown(Shutdown::Both);
        }
        conns.len()
    }

    /// Stops every open connection from passing bytes, without closing it.
    pub fn freeze(&self) -> usize {
        let conns: Vec<Conn> = std::mem::take(&mut *self.open.lock().unwrap());
        for c in &conns {
            c.frozen.store(true, Ordering::SeqCst);
        }
        let n = conns.len();
        // Keep the sockets open (a silent network, not a closed one).
        std::mem::forget(conns);
        n
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, frozen: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            while frozen.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
