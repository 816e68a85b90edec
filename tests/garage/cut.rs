//! A TCP proxy in front of the test server that cuts an upload short: once armed with a
//! byte budget, the connection that carries the byte past it is closed in both directions
//! (as a failed link or a crashed load balancer would). Then the proxy either disarms, and
//! every other connection passes untouched, or stays down, closing every request as a dead
//! server would, until brought up again.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct State {
    /// Bytes still allowed towards the server before the cut; None: disarmed.
    budget: Option<u64>,
    /// Whether to stay down after the cut.
    then_down: bool,
    down: bool,
    cuts: usize,
}

pub struct CuttingProxy {
    pub port: u16,
    state: Arc<Mutex<State>>,
}

impl CuttingProxy {
    /// Listens on a free port of 127.0.0.1, forwarding to `backend`, for as long as the
    /// test process lives.
    pub fn start(backend: SocketAddr) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let state = shared.clone();
                std::thread::spawn(move || forward(client, backend, &state));
            }
        });
        CuttingProxy { port, state }
    }

    /// Cuts the connection that sends the server its byte number `bytes` + 1 from now.
    pub fn cut_after(&self, bytes: u64) {
        let mut s = self.state.lock().unwrap();
        (s.budget, s.then_down) = (Some(bytes), false);
    }

    /// Like [`cut_after`](Self::cut_after), then passes nothing until [`up`](Self::up).
    pub fn cut_after_and_stay_down(&self, bytes: u64) {
        let mut s = self.state.lock().unwrap();
        (s.budget, s.then_down) = (Some(bytes), true);
    }

    pub fn up(&self) {
        self.state.lock().unwrap().down = false;
    }

    /// Connections cut so far.
    pub fn cuts(&self) -> usize {
        self.state.lock().unwrap().cuts
    }
}

fn forward(client: TcpStream, backend: SocketAddr, state: &Mutex<State>) {
    let Ok(server) = TcpStream::connect(backend) else {
        return;
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (Ok(mut from_server), Ok(mut to_client)) = (server.try_clone(), client.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_server, &mut to_client);
        let _ = to_client.shutdown(Shutdown::Write);
    });
    let (mut from_client, mut to_server) = (client, server);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from_client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let pass = {
            let mut s = state.lock().unwrap();
            match s.budget {
                _ if s.down => Some(0),
                Some(b) if n as u64 > b => {
                    s.budget = None;
                    s.cuts += 1;
                    s.down = s.then_down;
                    Some(b as usize)
                }
                Some(b) => {
                    s.budget = Some(b - n as u64);
                    None
                }
                None => None,
            }
        };
        if let Some(part) = pass {
            let _ = to_server.write_all(&buf[..part]);
            let _ = to_server.shutdown(Shutdown::Both);
            let _ = from_client.shutdown(Shutdown::Both);
            return;
        }
        if to_server.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to_server.shutdown(Shutdown::Write);
}
