//! Redis servers of a test's own, each on a free port on 127.0.0.1, keeping nothing on disk and
//! killed with the test process (see `tied`); no test talks to a machine's Redis. A test may stop
//! and restart its server on the same port to stage an outage.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, tied};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    log: Option<File>,
}

impl RedisServer {
    /// Starts a server and waits until it answers. Fails the test (never skips it) when it cannot.
    pub async fn start() -> RedisServer {
        let mut last = String::new();
        // A free port may be taken by another process before the server binds it: try another.
        for _ in 0..3 {
            let mut server = RedisServer { port: free_port(), child: None, log: None };
            match server.launch().await {
                Ok(()) => return server,
                Err(why) => last = why,
            }
        }
        panic!("the test's own Redis did not start: {last}");
    }

    /// Starts (again) on the same port and waits until it answers.
    pub async fn restart(&mut self) {
        if let Err(why) = self.launch().await {
            panic!("the test's own Redis did not restart: {why}");
        }
    }

    async fn launch(&mut self) -> Result<(), String> {
        self.stop();
        let (writer, log) = tied::log_file().map_err(|e| format!("log file: {e}"))?;
        let mut cmd = tied::command(binary("redis-server"), "KILL", None);
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(writer.try_clone().map_err(|e| e.to_string())?)
            .stderr(writer);
        self.child = Some(tied::spawn(cmd).map_err(|e| format!("cannot start setpriv: {e}"))?);
        self.log = Some(log);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if redis_ping(self.port) {
                return Ok(());
            }
            if self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()).is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let why = format!("redis-server on port {} did not answer:\n{}", self.port, self.logs());
        self.stop();
        Err(why)
    }

    /// SIGKILL: what a crash looks like.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// What the server logged so far.
    pub fn logs(&self) -> String {
        self.log.as_ref().map(tied::read_log).unwrap_or_default()
    }

    /// Runs `redis-cli` against this server; returns its trimmed output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(binary("redis-cli"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli: {e}"));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `name` on `PATH`, or a failed test that says how to get it.
fn binary(name: &str) -> PathBuf {
    tied::which(name)
        .unwrap_or_else(|| panic!("{name} is not installed (Debian package redis-server); scripts/test installs it"))
}

/// Whether a Redis on 127.0.0.1:`port` answers PING.
pub fn redis_ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}
