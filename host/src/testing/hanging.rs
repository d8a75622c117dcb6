//! An endpoint where a TCP connect hangs, on loopback: a listener that
//! never accepts, its accept queue filled, so the kernel drops further SYNs.
//!
//! Host unit tests use it as `crate::testing::hanging`; `tests/e2e` includes
//! this file by `#[path]`.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A listener whose connects hang while this value lives.
pub(crate) struct HangingEndpoint {
    addr: SocketAddr,
    _listener: socket2::Socket,
    _fillers: Vec<TcpStream>,
}

impl HangingEndpoint {
    /// Bind a free loopback port with a backlog of 0 and fill its queue.
    pub(crate) fn start() -> HangingEndpoint {
        use socket2::{Domain, Socket, Type};
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).expect("a socket");
        listener
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind a loopback port");
        listener.listen(0).expect("listen");
        let addr = listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("the listener's address");
        // Fill the accept queue (never accepted); the last ones may hang.
        let fillers = (0..3)
            .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(100)).ok())
            .collect();
        HangingEndpoint {
            addr,
            _listener: listener,
            _fillers: fillers,
        }
    }

    /// The address, as `127.0.0.1:PORT`.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}
