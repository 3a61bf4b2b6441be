//! Commands on a pseudo-terminal, for what a program does only on a terminal (progress bars, a
//! newline after a value, a prompt before reading stdin): the child's stdin, stdout and stderr
//! are the pty, and everything it draws is recorded with the time it arrived.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a pty's child drew, chunk by chunk, with when each arrived.
type Drawn = Arc<Mutex<Vec<(Duration, Vec<u8>)>>>;

/// A child on a pty.
pub struct Pty {
    pub child: Child,
    /// The master side, for typing.
    master: File,
    /// What arrived, in chunks, with when.
    seen: Drawn,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Pty {
    /// Spawns `cmd` with a 120×40 terminal as its stdin, stdout and stderr.
    pub fn spawn(mut cmd: Command) -> Pty {
        let (mut master, mut slave) = (-1, -1);
        let size = libc::winsize {
            ws_row: 40,
            ws_col: 120,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty writes two descriptors we then own.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: fresh descriptors from openpty, owned here only.
        let (master, slave) = unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let stdio = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap());
        cmd.stdin(stdio(&slave))
            .stdout(stdio(&slave))
            .stderr(stdio(&slave));
        let child = cmd.spawn().unwrap();
        drop(slave);
        let seen: Drawn = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let seen = seen.clone();
            let mut m = master.try_clone().unwrap();
            let started = Instant::now();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                // EIO once the child (the last holder of the slave) is gone.
                while let Ok(n) = m.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    seen.lock()
                        .unwrap()
                        .push((started.elapsed(), buf[..n].to_vec()));
                }
            })
        };
        Pty {
            child,
            master,
            seen,
            reader: Some(reader),
        }
    }

    /// Types `bytes` (Ctrl-D is `\x04`).
    pub fn type_in(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).unwrap();
    }

    /// Waits for the child to exit (at most `limit`) and for the last of its output; its exit
    /// code and everything it drew.
    pub fn finish(mut self, limit: Duration) -> (Option<i32>, String) {
        let started = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                panic!("still running after {limit:?}: {}", self.text());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        (status.code(), self.text())
    }

    /// Everything drawn so far.
    pub fn text(&self) -> String {
        let seen = self.seen.lock().unwrap();
        String::from_utf8_lossy(&seen.iter().flat_map(|(_, b)| b.clone()).collect::<Vec<_>>())
            .into_owned()
    }

    /// Everything drawn so far, with when each chunk arrived.
    pub fn chunks(&self) -> Vec<(Duration, String)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(t, b)| (*t, String::from_utf8_lossy(b).into_owned()))
            .collect()
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
