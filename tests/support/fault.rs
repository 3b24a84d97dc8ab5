//! A scriptable fault upstream: raw TCP on 127.0.0.1:0 where each accepted connection runs a
//! script (read a request, send chosen bytes, reset, hang), and every byte received is kept
//! per connection, with whether the proxy closed it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What one upstream connection received, and whether the proxy closed its end.
#[derive(Debug, Clone, Default)]
pub struct ConnLog {
    pub bytes: Vec<u8>,
    pub closed_by_peer: bool,
}

impl ConnLog {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

type Logs = Arc<Mutex<Vec<ConnLog>>>;

/// One accepted connection, handed to the script.
pub struct FaultConn {
    pub index: usize,
    stream: TcpStream,
    buffered: Vec<u8>,
    logs: Logs,
}

impl FaultConn {
    fn log(&self, update: impl FnOnce(&mut ConnLog)) {
        let mut logs = self.logs.lock().expect("logs lock");
        update(&mut logs[self.index]);
    }

    /// Reads more bytes into the buffer; false once the peer closed or reset.
    async fn fill(&mut self) -> bool {
        let mut buf = [0u8; 8192];
        match self.stream.read(&mut buf).await {
            Ok(0) | Err(_) => {
                self.log(|l| l.closed_by_peer = true);
                false
            }
            Ok(n) => {
                self.buffered.extend_from_slice(&buf[..n]);
                self.log(|l| l.bytes.extend_from_slice(&buf[..n]));
                true
            }
        }
    }

    /// Reads one request head and its `Content-Length` body (chunked bodies are read up to
    /// their last chunk); returns the head, or `None` when the peer closed first.
    pub async fn read_request(&mut self) -> Option<String> {
        let head_end = loop {
            if let Some(end) = find(&self.buffered, b"\r\n\r\n") {
                break end + 4;
            }
            if !self.fill().await {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buffered[..head_end]).into_owned();
        let lower = head.to_ascii_lowercase();
        let length = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        let chunked = lower.contains("transfer-encoding: chunked");
        let total = loop {
            let rest = &self.buffered[head_end..];
            let done = match (length, chunked) {
                (Some(n), _) => (rest.len() >= n).then_some(head_end + n),
                (None, true) => find(rest, b"0\r\n\r\n").map(|p| head_end + p + 5),
                (None, false) => Some(head_end),
            };
            if let Some(total) = done {
                break total;
            }
            if !self.fill().await {
                return None;
            }
        };
        self.buffered.drain(..total);
        Some(head)
    }

    /// Reads only a request head, leaving its body unread.
    pub async fn read_head(&mut self) -> Option<String> {
        loop {
            if let Some(end) = find(&self.buffered, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buffered[..end + 4]).into_owned();
                self.buffered.drain(..end + 4);
                return Some(head);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Reads until the bytes received hold `needle`, taking them and all before; false once
    /// the peer closed first.
    pub async fn read_until(&mut self, needle: &[u8]) -> bool {
        loop {
            if let Some(at) = find(&self.buffered, needle) {
                self.buffered.drain(..at + needle.len());
                return true;
            }
            if !self.fill().await {
                return false;
            }
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
        let _ = self.stream.flush().await;
    }

    /// Closes with a TCP reset (linger 0) instead of a FIN.
    pub fn reset(self) {
        let _ = self.stream.set_zero_linger();
        drop(self.stream);
    }

    /// Keeps the connection open, reading and recording, until the peer closes it.
    pub async fn hold(mut self) {
        while self.fill().await {}
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The running upstream; stops when dropped.
pub struct FaultUpstream {
    pub addr: SocketAddr,
    logs: Logs,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl FaultUpstream {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// What each connection received, in the order they were accepted.
    pub fn logs(&self) -> Vec<ConnLog> {
        self.logs.lock().expect("logs lock").clone()
    }

    /// Everything received on all connections.
    pub fn all_bytes(&self) -> String {
        self.logs().iter().map(|l| l.text()).collect()
    }
}

impl Drop for FaultUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts an upstream that runs `script` on every connection it accepts.
pub async fn spawn_fault<F, Fut>(script: F) -> FaultUpstream
where
    F: Fn(FaultConn) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let logs: Logs = Arc::default();
    let accepted = Arc::new(AtomicUsize::new(0));
    let script = Arc::new(script);
    let (task_logs, task_accepted) = (logs.clone(), accepted.clone());
    let task = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            let index = {
                let mut logs = task_logs.lock().expect("logs lock");
                logs.push(ConnLog::default());
                logs.len() - 1
            };
            task_accepted.fetch_add(1, Ordering::SeqCst);
            let conn = FaultConn {
                index,
                stream,
                buffered: Vec::new(),
                logs: task_logs.clone(),
            };
            connections.push(AbortOnDrop(tokio::spawn(script(conn))));
        }
    });
    FaultUpstream {
        addr,
        logs,
        accepted,
        task,
    }
}

/// Connection tasks end with the upstream.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A response head and body with a correct `Content-Length`.
pub fn ok_response(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
