//! PostgreSQL of the harness's own; no test talks to a machine's server or its Unix socket.
//!
//! `initdb` runs once into a template under `target/tmp` (a lock file makes the first test build it
//! while the others wait). Each test process then copies the template and serves it with
//! `postgres` on a free port on 127.0.0.1: trust auth, no Unix socket, no durability. The programs
//! come from `/usr/lib/postgresql/<newest>/bin` (Debian keeps them off `PATH`), or the directory in
//! `TOLLGATE_TEST_PG_BIN`. Both refuse to run as root, so as root they run as `nobody`.
//!
//! Why a server per test process: nextest runs each test in a process of its own, so the server's
//! life can be tied to the test's by the kernel (see `tied`) and nothing is shared between tests.
//! Measured on the 2-core machine: a test's server answers ~0.08 s after it asks (copy in memory,
//! start) and `CREATE DATABASE` takes ~0.03 s more; an `initdb` per test would add ~0.35 s, ~1.8 s
//! while the machine is building. A server shared by the whole run would need a run-wide
//! teardown, which nextest does not have. Under `cargo test` the tests of one binary share a server.
//!
//! Teardown: a small `sh` supervisor holds the server. When the test process ends, however it
//! ends, the supervisor gets SIGTERM, asks the server for a fast shutdown (which also releases its
//! shared memory), waits for it and removes the data directory. The server gets SIGINT by itself
//! should the supervisor die first.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{free_port, tied};

/// This test process's server.
pub struct PgServer {
    pub port: u16,
    psql: PathBuf,
    _supervisor: Child,
    log: File,
}

/// The server of this process, started on first use. A test that needs it fails, never skips, when
/// it cannot start.
pub fn server() -> &'static PgServer {
    static SERVER: OnceLock<Result<PgServer, String>> = OnceLock::new();
    match SERVER.get_or_init(PgServer::start) {
        Ok(server) => server,
        Err(why) => panic!("the test's own PostgreSQL did not start: {why}"),
    }
}

/// Runs a `psql` query on `db` of the harness's server; returns its unaligned output.
pub fn psql(db: &str, sql: &str) -> String {
    let server = server();
    let out = Command::new(&server.psql)
        .args(["-X", "-h", "127.0.0.1", "-p", &server.port.to_string(), "-U", "postgres", "-d", db, "-At", "-c", sql])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", server.psql.display()));
    assert!(
        out.status.success(),
        "psql on the test's PostgreSQL (port {}) failed: {}\n{}",
        server.port,
        String::from_utf8_lossy(&out.stderr),
        server.logs()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The settings a `tollgate` process needs to use database `name` on the harness's server.
pub fn env(name: &str) -> Vec<(&'static str, String)> {
    vec![
        ("TOLLGATE_DATABASE", "postgres".into()),
        ("TOLLGATE_PG_HOST", "127.0.0.1".into()),
        ("TOLLGATE_PG_PORT", server().port.to_string()),
        ("TOLLGATE_PG_USER", "postgres".into()),
        ("TOLLGATE_PG_DATABASE", name.into()),
    ]
}

/// A fresh database for one test on the harness's server. It goes with the server, so nothing
/// drops it.
pub struct PgDatabase {
    pub name: String,
}

impl PgDatabase {
    pub fn fresh() -> PgDatabase {
        let name = format!("tollgate_test_{}", uuid::Uuid::new_v4().simple());
        psql("postgres", &format!("CREATE DATABASE {name}"));
        PgDatabase { name }
    }

    /// See [`env`].
    pub fn env(&self) -> Vec<(&'static str, String)> {
        env(&self.name)
    }
}

// The supervisor: $1 is the directory to remove, the rest the server's command line.
const SUPERVISOR: &str = r#"dir=$1; shift
"$@" </dev/null &
pg=$!
trap 'kill -INT "$pg" 2>/dev/null' TERM
wait "$pg"
wait "$pg" 2>/dev/null
rm -rf "$dir""#;

impl PgServer {
    fn start() -> Result<PgServer, String> {
        let bin = bin_dir()?;
        let run_as = (tied::euid() == 0).then(tied::nobody);
        let template = template(&bin, run_as)?;
        let scratch = scratch_dir()?;
        let psql = Some(bin.join("psql")).filter(|p| p.is_file()).or_else(|| tied::which("psql"));
        let psql = psql.ok_or("psql is not installed (Debian package postgresql-client); scripts/test installs it")?;
        let mut last = String::new();
        // A free port may be taken by another process before the server binds it: try another.
        for attempt in 0..3 {
            let dir = scratch.join(format!("{}-{attempt}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let data = dir.join("data");
            run(Command::new("cp").arg("-a").arg(&template).arg(&data))?;
            let port = free_port();
            let (writer, log) = tied::log_file().map_err(|e| format!("log file: {e}"))?;
            let mut postgres: Vec<OsString> = vec!["-c".into(), SUPERVISOR.into(), "pg-supervisor".into()];
            postgres.push(dir.clone().into());
            postgres.extend(tied::command_line(bin.join("postgres"), "INT", run_as));
            postgres.extend(["-D".into(), data.into_os_string(), "-p".into(), port.to_string().into()]);
            for setting in SETTINGS {
                postgres.extend(["-c".into(), OsString::from(setting)]);
            }
            let mut cmd = tied::command("sh", "TERM", None);
            cmd.args(postgres)
                .stdin(Stdio::null())
                .stdout(writer.try_clone().map_err(|e| e.to_string())?)
                .stderr(writer);
            let mut supervisor = tied::spawn(cmd).map_err(|e| format!("cannot start sh: {e}"))?;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let text = tied::read_log(&log);
                if text.contains("database system is ready to accept connections") {
                    return Ok(PgServer { port, psql, _supervisor: supervisor, log });
                }
                if supervisor.try_wait().ok().flatten().is_some() || Instant::now() > deadline {
                    super::send_signal(supervisor.id(), "TERM");
                    let _ = supervisor.wait();
                    last = format!("{} on port {port} did not start:\n{text}", bin.join("postgres").display());
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Err(last)
    }

    /// What the server logged so far (for failure messages).
    pub fn logs(&self) -> String {
        tied::read_log(&self.log)
    }
}

// Settings for a throwaway server: loopback only, no Unix socket (never the machine's
// /var/run/postgresql), nothing forced to disk, dynamic shared memory in the data directory so
// even a SIGKILLed server leaves none behind.
const SETTINGS: &[&str] = &[
    "listen_addresses=127.0.0.1",
    "unix_socket_directories=",
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "dynamic_shared_memory_type=mmap",
];

/// The directory holding `initdb` and `postgres`.
fn bin_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("TOLLGATE_TEST_PG_BIN").map(PathBuf::from) {
        return if dir.join("initdb").is_file() {
            Ok(dir)
        } else {
            Err(format!("TOLLGATE_TEST_PG_BIN={} holds no initdb", dir.display()))
        };
    }
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").is_file() && bin.join("postgres").is_file())
        .max();
    newest
        .map(|(_, bin)| bin)
        .or_else(|| tied::which("initdb").and_then(|p| Some(p.parent()?.to_path_buf())))
        .ok_or_else(|| {
            "PostgreSQL's server programs are not installed (no /usr/lib/postgresql/*/bin/initdb, no initdb on \
             PATH; Debian package postgresql); scripts/test installs them"
                .to_string()
        })
}

/// Where per-test data directories live: somewhere `nobody` can reach, one per user. In memory
/// when the machine has `/dev/shm`: copying the template there takes ~0.04 s, ~0.3 s on disk.
fn scratch_dir() -> Result<PathBuf, String> {
    let shm = Path::new("/dev/shm");
    let parent = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
    let dir = parent.join(format!("tollgate-test-pg-{}", tied::euid()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

/// The initialised data directory every server copies, built once per PostgreSQL version and user.
fn template(bin: &Path, run_as: Option<(u32, u32)>) -> Result<PathBuf, String> {
    let out = Command::new(bin.join("postgres")).arg("--version").output().map_err(|e| format!("postgres: {e}"))?;
    let version: String = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(2)
        .unwrap_or("unknown")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
        .collect();
    // Bump the trailing number when the initdb options change.
    let key = format!("{version}-uid{}-1", tied::euid());
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("postgres-template");
    std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    let template = root.join(&key);
    let lock = File::create(root.join(format!("{key}.lock"))).map_err(|e| format!("lock file: {e}"))?;
    lock.lock().map_err(|e| format!("lock {key}.lock: {e}"))?;
    if template.join("PG_VERSION").is_file() {
        return Ok(template);
    }
    // initdb writes into the scratch directory, which `nobody` can reach; the result is copied here.
    let staging = scratch_dir()?.join(format!("initdb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir(&staging).map_err(|e| format!("{}: {e}", staging.display()))?;
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(&staging, Some(uid), Some(gid)).map_err(|e| format!("chown: {e}"))?;
    }
    let mut initdb = tied::command(bin.join("initdb"), "KILL", run_as);
    initdb.arg("-D").arg(staging.join("data"));
    initdb.args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"]);
    // 1 MiB WAL segments instead of 16: a smaller template to copy per test.
    initdb.arg("--wal-segsize=1");
    let built = tied::spawn(initdb).and_then(Child::wait_with_output).map_err(|e| format!("initdb: {e}"));
    let result = built.and_then(|out| {
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let partial = root.join(format!("{key}.partial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&partial);
        run(Command::new("cp").arg("-a").arg(staging.join("data")).arg(&partial))?;
        std::fs::rename(&partial, &template).map_err(|e| format!("rename template: {e}"))
    });
    let _ = std::fs::remove_dir_all(&staging);
    result.map(|()| template)
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() { Ok(()) } else { Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr))) }
}
