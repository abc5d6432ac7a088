//! `nh-sim serial`: buses on real ptys, opened through their links the way the gateway opens a
//! port (tokio-serial, exclusive mode). Script times are fractions of a second so the whole file
//! runs in a few seconds.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::ChildStdout;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_serial::{SerialPortBuilderExt, SerialStream};

use nh_sim::serial::{self, BenchOptions, BusSummary, Counts, SerialError};

/// A bench running in this process, its output lines collected.
struct Running {
    dir: tempfile::TempDir,
    lines: Arc<Mutex<Vec<String>>>,
    /// `None` when the bench runs for a --duration.
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<Vec<BusSummary>, SerialError>>,
}

impl Running {
    /// Starts the bench at once (no --wait-start) and waits for `started`.
    async fn start(name: &str, toml: &str, duration: Option<Duration>) -> Running {
        let bench = serial::parse(toml).expect("valid bench");
        let dir = tempfile::Builder::new()
            .prefix(&format!("nh-sim-serial-{name}-"))
            .tempdir()
            .expect("temp dir");
        let opts = BenchOptions {
            dir: dir.path().to_path_buf(),
            duration,
        };
        let (tx, mut rx) = mpsc::channel(serial::LINES_CAPACITY);
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                sink.lock().expect("lines").push(line);
            }
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                if stopped.await.is_err() {
                    // No stop sender: the bench runs for its duration.
                    std::future::pending::<()>().await;
                }
            };
            serial::run_bench(&bench, &opts, std::future::ready(()), shutdown, tx).await
        });
        let running = Running {
            dir,
            lines,
            stop: duration.is_none().then_some(stop),
            task,
        };
        running.wait_line(|l| l == "started", Duration::from_secs(5)).await;
        running
    }

    fn link(&self, bus: &str) -> PathBuf {
        self.dir.path().join(bus)
    }

    /// Waits for a line matching `pred`.
    async fn wait_line(&self, pred: impl Fn(&str) -> bool, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self.lines.lock().expect("lines").iter().find(|l| pred(l)) {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no such line within {within:?}; lines: {:#?}",
                self.lines.lock().expect("lines")
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the bench (or waits for its --duration) and returns its summaries and every line.
    async fn finish(mut self) -> (Vec<BusSummary>, Vec<String>) {
        if let Some(stop) = self.stop.take() {
            stop.send(()).ok();
        }
        let summaries = tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("bench stops in time")
            .expect("bench task")
            .expect("bench ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let lines = self.lines.lock().expect("lines").clone();
        (summaries, lines)
    }
}

fn open(link: &Path) -> SerialStream {
    tokio_serial::new(link.to_string_lossy(), 9600)
        .open_native_async()
        .unwrap_or_else(|e| panic!("open {}: {e}", link.display()))
}

/// CRC-16/MODBUS, written out again here so the simulator's own code does not grade itself.
fn crc16(data: &[u8]) -> [u8; 2] {
    let mut crc: u16 = 0xFFFF;
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xA001 } else { crc >> 1 };
        }
    }
    crc.to_le_bytes()
}

fn request(unit: u8, fc: u8, address: u16, count: u16) -> Vec<u8> {
    let mut r = vec![unit, fc];
    r.extend_from_slice(&address.to_be_bytes());
    r.extend_from_slice(&count.to_be_bytes());
    let crc = crc16(&r);
    r.extend_from_slice(&crc);
    r
}

/// Reads until `n` bytes came or `within` passed; returns what came.
async fn read_upto(port: &mut SerialStream, n: usize, within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 512];
    while got.len() < n {
        match tokio::time::timeout_at(deadline, AsyncReadExt::read(port, &mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(k)) => got.extend_from_slice(&buf[..k]),
        }
    }
    got
}

/// Sends a read request and returns the registers of a well-formed answer.
async fn read_registers(port: &mut SerialStream, unit: u8, fc: u8, address: u16, count: u16) -> Vec<u16> {
    AsyncWriteExt::write_all(port, &request(unit, fc, address, count))
        .await
        .expect("write request");
    let len = 5 + 2 * usize::from(count);
    let answer = read_upto(port, len, Duration::from_secs(2)).await;
    assert_eq!(answer.len(), len, "answer of unit {unit}: {answer:02X?}");
    assert_eq!(answer[..3], [unit, fc, (2 * count) as u8], "{answer:02X?}");
    assert_eq!(answer[len - 2..], crc16(&answer[..len - 2]), "CRC of {answer:02X?}");
    answer[3..len - 2]
        .chunks(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]))
        .collect()
}

const GAS_BENCH: &str = r#"
[[buses]]
name = "gas"
protocol = "modbus_rtu"
[[buses.units]]
unit = 1
model = "generic_gas"
script = [{ at_s = 0, lel = 12.5 }]
[[buses.units]]
unit = 2
model = "generic_gas"
script = [{ at_s = 0, lel = 3.0 }, { at_s = 0, silent = true }]
[[buses.units]]
unit = 3
model = "midas"
script = [{ at_s = 0, lel = 30.0 }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_units_answer_fc03_fc04_stay_silent_and_raise_exceptions() {
    let bench = Running::start("modbus", GAS_BENCH, None).await;
    let mut port = open(&bench.link("gas"));

    let generic = read_registers(&mut port, 1, 0x03, 0, 7).await;
    assert_eq!(generic, [125, 1, 1, 0, 200, 500, 1]);
    assert_eq!(
        read_registers(&mut port, 1, 0x04, 0, 7).await,
        generic,
        "FC04 reads the same"
    );
    assert_eq!(read_registers(&mut port, 1, 0x03, 3, 1).await, [0]);

    // A silent unit, a unit not on the bus and a broadcast: no answer.
    for unit in [2, 9, 0] {
        AsyncWriteExt::write_all(&mut port, &request(unit, 0x03, 0, 1))
            .await
            .expect("write");
        let nothing = read_upto(&mut port, 1, Duration::from_millis(300)).await;
        assert!(nothing.is_empty(), "unit {unit} answered {nothing:02X?}");
    }

    // Past the 7 registers: exception 02. Another function: exception 01.
    AsyncWriteExt::write_all(&mut port, &request(1, 0x03, 5, 5))
        .await
        .expect("write");
    let exc = read_upto(&mut port, 5, Duration::from_secs(2)).await;
    assert_eq!(exc[..3], [0x01, 0x83, 0x02], "{exc:02X?}");
    assert_eq!(exc[3..], crc16(&exc[..3]));
    let mut write = vec![1, 0x06, 0, 0, 0, 1];
    let crc = crc16(&write);
    write.extend_from_slice(&crc);
    AsyncWriteExt::write_all(&mut port, &write).await.expect("write");
    let exc = read_upto(&mut port, 5, Duration::from_secs(2)).await;
    assert_eq!(exc[..3], [0x01, 0x86, 0x01], "{exc:02X?}");

    // Line noise before a request: the unit still finds it.
    let mut noisy = vec![0xFF, 0x03, 0x42];
    noisy.extend(request(1, 0x03, 0, 1));
    AsyncWriteExt::write_all(&mut port, &noisy).await.expect("write");
    let answer = read_upto(&mut port, 7, Duration::from_secs(2)).await;
    assert_eq!(answer[..5], [1, 3, 2, 0, 125], "{answer:02X?}");

    // Midas: status bits (monitoring, low alarm at 30 %LEL), word-swapped float, %LEL unit.
    let midas = read_registers(&mut port, 3, 0x03, 0, 16).await;
    assert_eq!(midas[0] & 0x0F, 1, "monitoring");
    assert_eq!(midas[0] & 0xC0, 0x40, "low alarm only");
    assert_eq!(f32::from_bits((u32::from(midas[3]) << 16) | u32::from(midas[2])), 30.0);
    assert_eq!(midas[4], 30);
    assert_eq!(midas[6], 0x0800);

    drop(port);
    let (summaries, lines) = bench.finish().await;
    // Requests: 3 generic reads, 3 unanswered, exception 02, exception 01, the noisy one, Midas.
    assert_eq!(
        summaries[0].counts,
        Counts::Modbus {
            requests: 10,
            answered: 7
        }
    );
    assert!(
        lines.contains(&"done bus=gas requests=10 answered=7".to_owned()),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("event bus=gas unit=2 t_ms=") && l.ends_with("what=silent")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("event bus=gas unit=3 ") && l.contains(" what=alarm_low lel=30.0")),
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_hangs_up_the_open_port_and_a_new_pty_takes_the_link() {
    let toml = r#"
[[buses]]
name = "gas"
protocol = "modbus_rtu"
outages = [{ at_s = 1.0, for_s = 0.4 }]
[[buses.units]]
unit = 1
model = "generic_gas"
script = [{ at_s = 0, lel = 12.5 }, { at_s = 1.2, lel = 40.0 }]
"#;
    let bench = Running::start("outage", toml, None).await;
    let link = bench.link("gas");
    let before = std::fs::read_link(&link).expect("link");
    assert!(before.starts_with("/dev/pts"), "{}", before.display());
    let mut port = open(&link);
    assert_eq!(read_registers(&mut port, 1, 0x03, 0, 1).await, [125]);

    bench
        .wait_line(|l| l.contains("what=outage_begin"), Duration::from_secs(3))
        .await;
    assert!(std::fs::symlink_metadata(&link).is_err(), "no link during the outage");
    // The gateway's open port sees the hangup: end of file or an error, promptly.
    let mut buf = [0u8; 16];
    match tokio::time::timeout(Duration::from_secs(1), AsyncReadExt::read(&mut port, &mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        other => panic!("the old port did not see the hangup: {other:?}"),
    }
    drop(port);

    let end = bench
        .wait_line(|l| l.contains("what=outage_end"), Duration::from_secs(3))
        .await;
    let after = std::fs::read_link(&link).expect("link is back");
    assert!(end.ends_with(&format!("path={}", after.display())), "{end}");
    // The unit kept its script time: the step at 1.2 s happened during the outage.
    let mut port = open(&link);
    assert_eq!(read_registers(&mut port, 1, 0x03, 0, 1).await, [400]);
    drop(port);
    let mut port = open(&link);
    assert_eq!(read_registers(&mut port, 1, 0x03, 0, 1).await, [400], "reopened again");
    drop(port);

    let (_, lines) = bench.finish().await;
    let ptys: Vec<&String> = lines.iter().filter(|l| l.starts_with("pty bus=gas ")).collect();
    assert_eq!(ptys.len(), 2, "one pty line per pty: {lines:#?}");
    assert!(ptys[1].ends_with(&format!("path={}", after.display())));
    assert!(
        lines.contains(&"done bus=gas requests=3 answered=3".to_owned()),
        "{lines:#?}"
    );
    assert!(std::fs::symlink_metadata(&link).is_err(), "link removed at the end");
}

/// A resynchronising frame reader, independent of the simulator's code: the valid frames and
/// the number of bytes that belonged to none.
fn frames(bytes: &[u8]) -> (Vec<(u8, u8, Vec<u8>)>, usize) {
    let mut out = Vec::new();
    let (mut i, mut noise) = (0, 0);
    while i < bytes.len() {
        if bytes.len() - i >= 9 && bytes[i] == 0x53 && bytes[i + 1] == 0x59 {
            let len = usize::from(bytes[i + 4]) << 8 | usize::from(bytes[i + 5]);
            let end = i + 9 + len;
            if end <= bytes.len() && bytes[end - 2] == 0x54 && bytes[end - 1] == 0x43 {
                let sum = bytes[i..i + 6 + len].iter().fold(0u8, |a, b| a.wrapping_add(*b));
                if sum == bytes[i + 6 + len] {
                    out.push((bytes[i + 2], bytes[i + 3], bytes[i + 6..i + 6 + len].to_vec()));
                    i = end;
                    continue;
                }
            }
        }
        i += 1;
        noise += 1;
    }
    (out, noise)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn radar_frames_check_out_through_a_garbage_burst() {
    let toml = r#"
seed = 5
[[buses]]
name = "radar"
protocol = "mr60fda1"
script = [
  { at_s = 0, presence = true, motion = "moving", body_movement = 40 },
  { at_s = 0.3, fall = true },
  { at_s = 0.5, garbage_bytes = 20000, garbage_chunk = 4096 },
]
"#;
    let bench = Running::start("radar", toml, Some(Duration::from_millis(1500))).await;
    let mut port = open(&bench.link("radar"));
    // Read like the gateway does, until the hangup at the end.
    let reader = tokio::spawn(async move {
        let mut bytes = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_secs(5), AsyncReadExt::read(&mut port, &mut buf)).await
        {
            if n == 0 {
                break;
            }
            bytes.extend_from_slice(&buf[..n]);
        }
        bytes
    });
    let end = bench
        .wait_line(|l| l.contains("what=garbage_end"), Duration::from_secs(3))
        .await;
    let frames_at_end: usize = end
        .split(' ')
        .find_map(|kv| kv.strip_prefix("frames="))
        .and_then(|n| n.parse().ok())
        .expect("frames= in garbage_end");
    let (summaries, lines) = bench.finish().await;
    let bytes = reader.await.expect("reader");

    let (found, noise) = frames(&bytes);
    assert_eq!(noise, 20000, "every byte outside a valid frame is garbage");
    let Counts::Radar { frames, garbage_bytes } = summaries[0].counts else {
        panic!("radar counts")
    };
    assert_eq!(garbage_bytes, 20000);
    assert_eq!(
        found.len() as u64,
        frames,
        "the done line counts exactly the frames a reader got"
    );
    assert!(found.len() > frames_at_end, "the 1 Hz report goes on after the burst");
    assert!(lines.contains(&format!("done bus=radar frames={frames} garbage_bytes=20000")));

    let of = |c: u8, k: u8| {
        found
            .iter()
            .filter(|f| (f.0, f.1) == (c, k))
            .map(|f| f.2.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(of(0x80, 0x01), [vec![1]], "presence once");
    assert_eq!(of(0x80, 0x02), [vec![2]], "motion once");
    assert_eq!(
        of(0x83, 0x01),
        [vec![0], vec![1]],
        "fall state at the start, then the fall"
    );
    assert_eq!(of(0x83, 0x05), [vec![0]], "dwell once");
    // At 0 s and 1 s, and one between each two of the 5 chunks.
    assert_eq!(of(0x80, 0x03).len(), 6, "{:?}", of(0x80, 0x03));
    assert!(of(0x80, 0x03).iter().all(|d| d == &[40]));
    assert!(lines.iter().any(|l| l.contains("t_ms=") && l.ends_with("what=fall")));
}

async fn next_line(out: &mut Lines<BufReader<ChildStdout>>) -> String {
    tokio::time::timeout(Duration::from_secs(5), out.next_line())
        .await
        .expect("a line in time")
        .expect("read")
        .expect("a line")
}

/// The binary: `--wait-start` holds the scripts at t=0 until `start`; stdin closing ends the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_waits_for_start_and_stops_when_stdin_closes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("bench.toml");
    std::fs::write(
        &file,
        "[[buses]]\nname = \"gas\"\nprotocol = \"modbus_rtu\"\n[[buses.units]]\nunit = 1\nmodel = \"generic_gas\"\n\
         script = [{ at_s = 0, lel = 5.0 }, { at_s = 0.2, lel = 25.0 }]\n",
    )
    .expect("write bench");
    let links = dir.path().join("links");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_nh-sim"))
        .arg("serial")
        .arg(&file)
        .arg("--dir")
        .arg(&links)
        .arg("--wait-start")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start nh-sim");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut out = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let pty = next_line(&mut out).await;
    let link = links.join("gas");
    assert!(
        pty.starts_with(&format!("pty bus=gas link={} path=/dev/pts/", link.display())),
        "{pty}"
    );
    assert_eq!(next_line(&mut out).await, "ready");

    // Held at t=0, however long we wait.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut port = open(&link);
    assert_eq!(read_registers(&mut port, 1, 0x03, 0, 4).await, [50, 1, 1, 0]);

    stdin.write_all(b"start\n").await.expect("start");
    assert_eq!(next_line(&mut out).await, "started");
    let first = next_line(&mut out).await;
    assert!(
        first.starts_with("event bus=gas unit=1 t_ms=0 wall_ms=") && first.ends_with(" what=lel lel=5.0"),
        "{first}"
    );
    let second = next_line(&mut out).await;
    assert!(second.ends_with(" what=lel lel=25.0"), "{second}");
    let t_ms: u64 = second
        .split(' ')
        .find_map(|kv| kv.strip_prefix("t_ms="))
        .and_then(|v| v.parse().ok())
        .expect("t_ms");
    assert!((200..1000).contains(&t_ms), "{second}");
    assert!(next_line(&mut out).await.ends_with(" what=alarm_low lel=25.0"));
    assert_eq!(read_registers(&mut port, 1, 0x03, 0, 4).await, [250, 1, 1, 1]);
    drop(port);

    drop(stdin);
    assert_eq!(next_line(&mut out).await, "done bus=gas requests=2 answered=2");
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("exits in time")
        .expect("status");
    assert!(status.success(), "{status}");
    assert!(std::fs::symlink_metadata(&link).is_err(), "link removed at exit");
}

/// SIGTERM ends a run with the `done` lines and exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reports_and_exits_0_on_sigterm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("bench.toml");
    std::fs::write(
        &file,
        "[[buses]]\nname = \"r\"\nprotocol = \"mr60fda1\"\nscript = [{ at_s = 0, presence = true }]\n",
    )
    .expect("write bench");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_nh-sim"))
        .arg("serial")
        .arg(&file)
        .arg("--dir")
        .arg(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start nh-sim");
    let _stdin = child.stdin.take();
    let mut out = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.ends_with("what=presence")) {
        seen.push(next_line(&mut out).await);
    }
    assert_eq!(seen[1..3], ["ready", "started"]);
    let pid = child.id().expect("pid").to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(kill.success());
    let mut rest = Vec::new();
    while let Ok(Some(line)) = out.next_line().await {
        rest.push(line);
    }
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("exits in time")
        .expect("status");
    assert!(status.success(), "{status}");
    let done = rest.last().expect("a done line");
    assert!(done.starts_with("done bus=r frames="), "{rest:?}");
    assert!(done.ends_with(" garbage_bytes=0"), "{done}");
}

#[test]
fn check_validates_and_lists_every_error() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/serial");
    for f in ["kitchen-gas.toml", "radar-fall.toml"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_nh-sim"))
            .args(["serial", "--check"])
            .arg(root.join(f))
            .output()
            .expect("run");
        assert!(out.status.success(), "{f}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: "));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[buses]]\nname = \"k\"\nprotocol = \"modbus_rtu\"\n[[buses.units]]\nunit = 300\nmodel = \"midas\"\n\
         high_alarm = 5\nscript = [{ at_s = 1, ramp_to = 30 }]\n",
    )
    .expect("write");
    for args in [&["serial", "--check"][..], &["validate"]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_nh-sim"))
            .args(args)
            .arg(&bad)
            .output()
            .expect("run");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("3 error(s) in serial bench"), "{err}");
        assert!(err.contains("line 4: bus `k` units[0]: key `unit`"), "{err}");
        assert!(err.contains("key `high_alarm`"), "{err}");
        assert!(err.contains("script[0]: key `over_s`"), "{err}");
    }
}
