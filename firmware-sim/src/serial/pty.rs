//! Pseudo-terminals standing in for serial ports, and the stable links that name them.
//!
//! The master side is the device end, driven through tokio's `AsyncFd`. The simulator also opens
//! the slave itself and keeps it open for the pty's whole life: while the gateway has its port
//! closed the master then never sees a hangup, and the slave is put in raw mode before anyone
//! else opens it, so nothing written early is echoed back or translated. The gateway opens the
//! slave in exclusive mode (TIOCEXCL + flock); the simulator's descriptor, opened first and never
//! locked, does not stand in its way.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags};
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt, PtyMaster};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
use tokio::io::unix::AsyncFd;

/// One pty pair.
#[derive(Debug)]
pub struct Pty {
    master: AsyncFd<PtyMaster>,
    /// Held open so the master never sees the slave's last close.
    slave: File,
    path: PathBuf,
}

fn io_err(what: &str, e: nix::Error) -> io::Error {
    io::Error::new(io::Error::from(e).kind(), format!("{what}: {e}"))
}

impl Pty {
    /// A new pair: master non-blocking and registered with the reactor, slave open and raw.
    pub fn open() -> io::Result<Pty> {
        let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY).map_err(|e| io_err("posix_openpt", e))?;
        grantpt(&master).map_err(|e| io_err("grantpt", e))?;
        unlockpt(&master).map_err(|e| io_err("unlockpt", e))?;
        let path = PathBuf::from(ptsname_r(&master).map_err(|e| io_err("ptsname_r", e))?);
        let slave = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NOCTTY)
            .open(&path)?;
        let mut termios = tcgetattr(slave.as_raw_fd()).map_err(|e| io_err("tcgetattr", e))?;
        cfmakeraw(&mut termios);
        tcsetattr(slave.as_raw_fd(), SetArg::TCSANOW, &termios).map_err(|e| io_err("tcsetattr", e))?;
        let flags = fcntl(master.as_raw_fd(), FcntlArg::F_GETFL).map_err(|e| io_err("fcntl", e))?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl(master.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(|e| io_err("fcntl", e))?;
        // tokio 1.54 deprecates `AsyncFd::new` because an arbitrary `AsRawFd` type may close or
        // swap its descriptor under the reactor; its replacement `register` is `unsafe`, which
        // this crate forbids. `PtyMaster` owns its descriptor, returns the same one from every
        // `as_raw_fd` call and closes it only when dropped, which the `AsyncFd` does last: the
        // condition `register` asks its caller to uphold holds here.
        #[allow(deprecated)]
        let master = AsyncFd::new(master)?;
        Ok(Pty { master, slave, path })
    }

    /// The slave's path (`/dev/pts/N`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True if bytes written on the master wait unread in the slave's input queue (the gateway
    /// has not read them yet). Polls the simulator's own slave descriptor, which shares that
    /// queue, without reading from it.
    pub fn has_unread(&self) -> io::Result<bool> {
        let mut fds = [PollFd::new(self.slave.as_raw_fd(), PollFlags::POLLIN)];
        poll(&mut fds, 0).map_err(|e| io_err("poll", e))?;
        Ok(fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLIN)))
    }

    /// Reads what the other end wrote.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.master.readable().await?;
            match guard.try_io(|m| {
                let mut m: &PtyMaster = m.get_ref();
                m.read(buf)
            }) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes some of `buf` once the pty accepts bytes; returns how many it took.
    pub async fn write(&self, buf: &[u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.master.writable().await?;
            match guard.try_io(|m| {
                let mut m: &PtyMaster = m.get_ref();
                m.write(buf)
            }) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}

/// Points `dir/name` at `target`, atomically: a temporary link renamed over the old one, so a
/// reader never finds the name missing or half made.
pub fn point_link(dir: &Path, name: &str, target: &Path) -> io::Result<PathBuf> {
    let link = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, &link)?;
    Ok(link)
}

/// Removes a link; a missing one is fine.
pub fn remove_link(link: &Path) -> io::Result<()> {
    match std::fs::remove_file(link) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::timeout;
    use tokio_serial::SerialPortBuilderExt;

    use super::*;
    use crate::test_broker::wait_until;

    async fn read_exactly(pty: &Pty, n: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while got.len() < n {
            let k = timeout(Duration::from_secs(2), pty.read(&mut buf))
                .await
                .expect("master read in time")
                .expect("master read");
            got.extend_from_slice(&buf[..k]);
        }
        got
    }

    async fn exchange(pty: &Pty, link: &Path) {
        let mut port = tokio_serial::new(link.to_string_lossy(), 9600)
            .open_native_async()
            .expect("open the slave like the gateway does");
        AsyncWriteExt::write_all(&mut port, &[0x01, 0x03, 0x0A, 0x0D, 0xFF])
            .await
            .expect("write");
        assert_eq!(
            read_exactly(pty, 5).await,
            [0x01, 0x03, 0x0A, 0x0D, 0xFF],
            "raw: no CR/LF translation"
        );
        pty.write(&[0x53, 0x59, 0x0A, 0x00]).await.expect("master write");
        let mut got = [0u8; 4];
        timeout(Duration::from_secs(2), AsyncReadExt::read_exact(&mut port, &mut got))
            .await
            .expect("slave read in time")
            .expect("slave read");
        assert_eq!(got, [0x53, 0x59, 0x0A, 0x00]);
    }

    #[tokio::test]
    async fn the_gateway_can_open_close_and_reopen_the_slave_through_the_link() {
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = temp.path();
        let pty = Pty::open().expect("pty");
        assert!(pty.path().starts_with("/dev/pts"), "{}", pty.path().display());
        let link = point_link(dir, "bus", pty.path()).expect("link");
        assert_eq!(std::fs::read_link(&link).expect("read link"), pty.path());
        exchange(&pty, &link).await;
        // The gateway's port is closed now: the master must not see a hangup (EIO) meanwhile.
        let mut buf = [0u8; 8];
        let idle = timeout(Duration::from_millis(100), pty.read(&mut buf)).await;
        assert!(idle.is_err(), "the master saw {idle:?} while the port was closed");
        // Opened again: serialport's close lifted TIOCEXCL, the sim's descriptor never locked.
        exchange(&pty, &link).await;

        // The link moves atomically to a new pty.
        let other = Pty::open().expect("pty");
        point_link(dir, "bus", other.path()).expect("relink");
        assert_eq!(std::fs::read_link(&link).expect("read link"), other.path());
        assert!(!dir.join(".bus.tmp").exists());
        remove_link(&link).expect("remove");
        remove_link(&link).expect("remove twice");
    }

    #[tokio::test]
    async fn unread_bytes_are_seen_until_the_gateway_reads_them() {
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = temp.path();
        let pty = Pty::open().expect("pty");
        let link = point_link(dir, "bus", pty.path()).expect("link");
        assert!(!pty.has_unread().expect("poll"));
        pty.write(&[1, 2, 3]).await.expect("write");
        wait_until("the bytes written waiting on the slave", Duration::from_secs(2), || {
            pty.has_unread().expect("poll")
        })
        .await;
        let mut port = tokio_serial::new(link.to_string_lossy(), 9600)
            .open_native_async()
            .expect("open");
        let mut got = [0u8; 3];
        timeout(Duration::from_secs(2), AsyncReadExt::read_exact(&mut port, &mut got))
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(got, [1, 2, 3], "written before the open, read after it");
        assert!(!pty.has_unread().expect("poll"));
    }

    #[tokio::test]
    async fn nothing_written_before_the_gateway_opens_is_echoed_back() {
        let pty = Pty::open().expect("pty");
        pty.write(b"\x53\x59hello\r\n").await.expect("write");
        let mut buf = [0u8; 64];
        let echoed = timeout(Duration::from_millis(200), pty.read(&mut buf)).await;
        assert!(echoed.is_err(), "the raw slave must not echo: {echoed:?}");
    }
}
