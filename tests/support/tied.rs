//! Child processes that cannot outlive the test process. Each is started under `setpriv
//! --pdeathsig`, so the kernel signals it when its parent thread ends, and every one is spawned by
//! a single thread that lives as long as the process: the signal comes when the process ends,
//! however it ends (return, panic, nextest's SIGKILL on a timeout), never when some short-lived
//! runtime thread that happened to start it goes away.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Seek};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::sync::mpsc;

type Request = (Command, mpsc::Sender<io::Result<Child>>);

/// `program` wrapped in `setpriv`: `death_signal` on the process's end, run as `as_user` (uid, gid)
/// when given. Add arguments, environment and stdio, then [`spawn`] it.
pub fn command(program: impl AsRef<Path>, death_signal: &str, as_user: Option<(u32, u32)>) -> Command {
    let mut line = command_line(program, death_signal, as_user).into_iter();
    let mut cmd = Command::new(line.next().unwrap_or_default());
    cmd.args(line);
    cmd
}

/// The command line of [`command`], to run inside another one.
pub fn command_line(program: impl AsRef<Path>, death_signal: &str, as_user: Option<(u32, u32)>) -> Vec<OsString> {
    let setpriv = which("setpriv").unwrap_or_else(|| "setpriv".into());
    let mut line = vec![setpriv.into_os_string(), format!("--pdeathsig={death_signal}").into()];
    if let Some((uid, gid)) = as_user {
        line.extend([format!("--reuid={uid}"), format!("--regid={gid}"), "--clear-groups".into()].map(OsString::from));
    }
    line.extend(["--".into(), program.as_ref().as_os_str().to_owned()]);
    line
}

/// Spawns `cmd` from the process-long thread.
pub fn spawn(cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<Request>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        // Never returns while the static sender lives, i.e. until the process exits.
        std::thread::Builder::new()
            .name("tied-children".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn the tied-children thread");
        tx
    });
    let gone = || io::Error::other("the tied-children thread is gone");
    let (reply, answer) = mpsc::channel();
    spawner.send((cmd, reply)).map_err(|_| gone())?;
    answer.recv().map_err(|_| gone())?
}

/// A log file with no name: the writer (append-only, for a child's stdout and stderr) and a reader
/// of its own. Nothing is left on disk, whatever happens to the test.
pub fn log_file() -> io::Result<(File, File)> {
    let path = std::env::temp_dir().join(format!("tollgate-test-{}-{}.log", std::process::id(), uuid::Uuid::new_v4()));
    let writer = File::options().create_new(true).append(true).open(&path)?;
    let reader = File::open(&path);
    std::fs::remove_file(&path)?;
    Ok((writer, reader?))
}

/// Everything written to the log so far.
pub fn read_log(reader: &File) -> String {
    let mut text = String::new();
    let mut r = reader;
    let _ = r.rewind().and_then(|_| r.read_to_string(&mut text));
    text
}

/// `name` found on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// The effective uid of this process (the owner of `/proc/self`).
pub fn euid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX)
}

/// uid and gid of `nobody`: servers that refuse root (PostgreSQL) run as it when the tests run as root.
pub fn nobody() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"nobody") && f.len() > 3)
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        .unwrap_or((65534, 65534))
}
