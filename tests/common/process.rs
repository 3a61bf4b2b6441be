//! Processes of tests and benches: `dht-store` commands with a clean environment that die with
//! their parent, children stopped (SIGTERM, then SIGKILL) when dropped, free ports.

use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `dht-store` command with none of the caller's `DHT_STORE_*` settings, no stdin, and bound
/// to die with the test or bench (PR_SET_PDEATHSIG), so that not even a SIGKILLed one leaves it
/// running.
pub fn dht_store_command() -> Command {
    dht_store_command_for(std::path::Path::new(super::BIN))
}

/// [`dht_store_command`] for another `dht-store` binary, such as an older build a bench
/// compares this one with.
pub fn dht_store_command_for(bin: &std::path::Path) -> Command {
    let mut cmd = Command::new(bin);
    for (k, _) in std::env::vars() {
        if k.starts_with("DHT_STORE_") {
            cmd.env_remove(k);
        }
    }
    cmd.stdin(Stdio::null());
    die_with_parent(&mut cmd);
    cmd
}

/// PR_SET_PDEATHSIG: the child gets SIGTERM when the bench dies, even by SIGKILL.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A port nobody listens on right now on `ip`, below the kernel's ephemeral range: a port
/// from `bind(0)` lies inside that range, where any outgoing connection of a concurrent test
/// may take it before the node binds it (metrics tests failed so in CI). Ports are handed out
/// in turn from a start that differs per process, so no two calls of one process return the
/// same port.
pub fn free_port_on(ip: Ipv4Addr) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;
    const FIRST: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Chosen once: a start per call would let two calls meet.
    static START: OnceLock<u32> = OnceLock::new();
    let end = ephemeral_start().max(FIRST + 1);
    let span = end - FIRST;
    let start = *START.get_or_init(|| {
        std::process::id().wrapping_mul(7_919)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
    });
    for _ in 0..span {
        let turn = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = FIRST + start.wrapping_add(turn) % span;
        if TcpListener::bind((ip, port as u16)).is_ok() {
            return port as u16;
        }
    }
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("no free port on {ip}: {e}"))
        .port()
}

/// The first port of the kernel's ephemeral range (32768 where it cannot be read).
fn ephemeral_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A child process stopped (SIGTERM, then SIGKILL) when dropped, also on panic.
pub struct Reaped {
    pub name: String,
    pub child: Child,
}

/// Children still to be reaped and temporary directories, for the SIGINT/SIGTERM handler.
pub static LIVE_CHILDREN: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());
pub static TEMP_DIRS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// A temporary directory, removed on drop, and by the signal handler if the bench is stopped.
pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temp dir");
    TEMP_DIRS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(dir.path().to_path_buf());
    dir
}

/// On SIGINT or SIGTERM: stop every child, remove the temporary directories, exit 130.
/// (Children are also bound to the bench by PR_SET_PDEATHSIG, should it be SIGKILLed.)
pub fn install_signal_handler(rt: &tokio::runtime::Runtime) {
    rt.spawn(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        eprintln!("stopped: terminating the nodes and removing the temporary directories");
        let pids = LIVE_CHILDREN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for &pid in &pids {
            // SAFETY: kill(2) on a child of ours that was not reaped yet.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        for &pid in &pids {
            // SAFETY: as above (an exited, unreaped child is a zombie: the pid is still ours).
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
        for dir in TEMP_DIRS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = std::fs::remove_dir_all(dir);
        }
        std::process::exit(130);
    });
}

impl Reaped {
    pub fn new(name: impl Into<String>, child: Child) -> Reaped {
        LIVE_CHILDREN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child.id());
        Reaped {
            name: name.into(),
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.try_wait().ok().flatten();
        if status.is_some() {
            self.forget();
        }
        status
    }

    /// Takes the (now reaped) child out of the signal handler's list.
    pub fn forget(&self) {
        let pid = self.child.id();
        LIVE_CHILDREN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|&p| p != pid);
    }

    /// SIGKILL now (a crash, for the benches that measure one), and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.forget();
    }

    pub fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        // SAFETY: kill(2) on our own child, which is not reaped yet (try_wait said so).
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                if !status.success() {
                    eprintln!("{} exited with {status} after SIGTERM", self.name);
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "{} did not exit within 15s of SIGTERM: killing it",
            self.name
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.forget();
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        self.stop();
    }
}
