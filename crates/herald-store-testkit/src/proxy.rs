//! A TCP proxy on loopback that a test puts between Herald and a database server, to show Herald what a
//! server restart or a hung server looks like from the client's side, without touching the shared server.
//!
//! - [`TcpProxy::forward`] relays every connection to the upstream server.
//! - [`TcpProxy::outage`] drops every open connection at once and then closes each new one as soon as it is
//!   accepted, as a server that went down (and is coming back) does; [`TcpProxy::restore`] relays again.
//!   [`TcpProxy::refused`] counts the connections turned away, so a test can wait until a client really
//!   tried during the outage instead of sleeping.
//! - [`TcpProxy::silent`] accepts connections and never answers (nor closes them): a server that hangs.
//! - [`TcpProxy::stall`] makes a relaying proxy hang: open connections stop carrying bytes (both ways) but
//!   stay open, new ones are accepted and never answered, until [`TcpProxy::restore`] (which closes the
//!   stalled ones and relays new ones again).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

/// What the proxy does with connections (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    Down,
    Silent,
    Stalled,
}

#[derive(Debug)]
struct Shared {
    upstream: Option<SocketAddr>,
    /// The mode, and a generation bumped at each outage: relays of an older generation end.
    mode: watch::Sender<(Mode, u64)>,
    refused: AtomicU64,
    refused_changed: Notify,
    stopped: AtomicBool,
}

/// A loopback TCP proxy; stops (and drops every connection) when dropped.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    /// A proxy to `upstream` that relays until told otherwise.
    pub async fn forward(upstream: SocketAddr) -> TcpProxy {
        Self::start(Some(upstream), Mode::Forward).await
    }

    /// A server that accepts every connection and never sends a byte (nor closes).
    pub async fn silent() -> TcpProxy {
        Self::start(None, Mode::Silent).await
    }

    async fn start(upstream: Option<SocketAddr>, mode: Mode) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a loopback port for the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let (mode, _) = watch::channel((mode, 0));
        let shared = Arc::new(Shared {
            upstream,
            mode,
            refused: AtomicU64::new(0),
            refused_changed: Notify::new(),
            stopped: AtomicBool::new(false),
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        TcpProxy {
            addr,
            shared,
            accept,
        }
    }

    /// The port clients connect to (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Drops every open connection and turns new ones away until [`restore`](Self::restore).
    pub fn outage(&self) {
        self.shared
            .mode
            .send_modify(|(mode, generation)| (*mode, *generation) = (Mode::Down, *generation + 1));
    }

    /// Stops every open connection carrying bytes, leaving it open, and holds new ones unanswered until
    /// [`restore`](Self::restore).
    pub fn stall(&self) {
        self.shared.mode.send_modify(|(mode, generation)| {
            (*mode, *generation) = (Mode::Stalled, *generation + 1)
        });
    }

    /// Relays new connections again (connections held by a stall are closed).
    pub fn restore(&self) {
        self.shared.mode.send_modify(|(mode, generation)| {
            if *mode == Mode::Stalled {
                *generation += 1;
            }
            *mode = Mode::Forward;
        });
    }

    /// Connections turned away since the proxy started.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` connections were turned away in all; panics after `within`.
    pub async fn wait_refused(&self, n: u64, within: Duration) {
        let waited = tokio::time::timeout(within, async {
            loop {
                let changed = self.shared.refused_changed.notified();
                if self.refused() >= n {
                    return;
                }
                changed.await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "the proxy turned away {} connections within {within:?}, expected {n}",
            self.refused()
        );
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.accept.abort();
        // Ends every relay (their generation is now old).
        self.outage();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Silent connections are kept here, open and unanswered, until the proxy stops; stalled ones until the
    // stall ends.
    let mut held = Vec::new();
    let mut stalled = Vec::new();
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        let (mode, generation) = *shared.mode.borrow();
        if mode != Mode::Stalled {
            stalled.clear();
        }
        match (mode, shared.upstream) {
            (Mode::Silent, _) => held.push(client),
            (Mode::Stalled, _) => stalled.push(client),
            (Mode::Down, _) | (Mode::Forward, None) => {
                drop(client);
                shared.refused.fetch_add(1, Ordering::SeqCst);
                shared.refused_changed.notify_waiters();
            }
            (Mode::Forward, Some(upstream)) => {
                tokio::spawn(relay(client, upstream, shared.mode.subscribe(), generation));
            }
        }
    }
}

/// Relays one connection until either side closes or an outage starts.
async fn relay(
    mut client: TcpStream,
    upstream: SocketAddr,
    mut mode: watch::Receiver<(Mode, u64)>,
    generation: u64,
) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let next_generation = async {
        loop {
            let (now, current) = *mode.borrow_and_update();
            if current != generation {
                return now;
            }
            if mode.changed().await.is_err() {
                return Mode::Down;
            }
        }
    };
    let interrupted = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => None,
        now = next_generation => Some(now),
    };
    if interrupted == Some(Mode::Stalled) {
        // Hold both sockets, carrying nothing, until the stall ends (or the proxy stops).
        while mode.changed().await.is_ok() {
            if mode.borrow_and_update().0 != Mode::Stalled {
                break;
            }
        }
    }
    // Dropping both sockets closes them: the client sees its connection end, as when a server stops.
}
